// accessgate on Azure: everything `azd up` creates, from an empty subscription.
//
// One resource group with: a Function App (Flex Consumption with an always-ready instance for
// the HTTP functions, or Elastic Premium EP1) running the accessgate custom handler under its
// system-assigned managed identity; identity-based host storage (shared keys off) with the work
// and poison queues, the wait table and the deployment container; Key Vault in RBAC mode for
// the ServiceNow secrets (and, later, a client-assertion certificate); Application Insights with
// Entra-authenticated ingestion and Log Analytics; the relay Logic App (Consumption, Microsoft's
// AADPOP trigger policy, a managed-identity HTTP action to /api/elm) unless ingressMode is
// 'direct'; every role assignment the app needs and no more. The outputs are what
// `accessgate setup` and the app settings consume.
targetScope = 'subscription'

@minLength(1)
@maxLength(40)
@description('azd environment name: names and tags every resource.')
param environmentName string

@minLength(1)
@description('Region of every resource.')
param location string

@allowed(['relay', 'direct'])
@description('relay: Entra calls the Logic App, which validates the PoP token and forwards to accessgate with its managed identity. direct: Entra calls accessgate (no public source shows Entra calling a non-Logic-App URL yet; verify with capture mode).')
param ingressMode string = 'relay'

@allowed(['flex', 'premium'])
@description('flex: Flex Consumption (FC1) with always-ready instances. premium: Elastic Premium EP1 (always warm; a fixed monthly cost).')
param hostingPlan string = 'flex'

@minValue(1)
@maxValue(10)
@description('Always-ready instances of the HTTP functions on Flex: Entra waits at most 2 s for the 202, which a cold start (tens of seconds) cannot meet.')
param alwaysReadyInstances int = 1

@description('relay mode: the audience the Logic App requests for accessgate (the Application ID URI of accessgate\'s API app registration). Empty: https://management.azure.com/, restricted to the Logic App\'s own identity by inbound.relay_caller_ids.')
param relayAudience string = ''

@description('ServiceNow instance URL (https://<instance>.service-now.com); empty: no ServiceNow.')
param serviceNowInstanceUrl string = ''

@description('The ServiceNow user accessgate signs in as (its password is the Key Vault secret servicenow-password).')
param serviceNowUsername string = 'accessgate'

@description('Directory (tenant) id that sends the callouts.')
param tenantId string = tenant().tenantId

var tags = { 'azd-env-name': environmentName, application: 'accessgate' }
var token = toLower(uniqueString(subscription().id, environmentName, location))

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-accessgate-${environmentName}'
  location: location
  tags: tags
}

module app 'modules/app.bicep' = {
  name: 'accessgate-app'
  scope: rg
  params: {
    location: location
    tags: tags
    token: token
    ingressMode: ingressMode
    hostingPlan: hostingPlan
    alwaysReadyInstances: alwaysReadyInstances
    relayAudience: relayAudience
    serviceNowInstanceUrl: serviceNowInstanceUrl
    serviceNowUsername: serviceNowUsername
    tenantId: tenantId
  }
}

output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_TENANT_ID string = tenantId
output ACCESSGATE_FUNCTION_APP_NAME string = app.outputs.functionAppName
output ACCESSGATE_URL string = app.outputs.url
output ACCESSGATE_PRINCIPAL_ID string = app.outputs.principalId
output ACCESSGATE_KEY_VAULT_URL string = app.outputs.keyVaultUrl
output ACCESSGATE_INGRESS_MODE string = ingressMode
output ACCESSGATE_LOGIC_APP_RESOURCE_ID string = app.outputs.logicAppResourceId
output ACCESSGATE_LOGIC_APP_NAME string = app.outputs.logicAppName
output ACCESSGATE_LOGIC_APP_URL string = app.outputs.logicAppUrl
output ACCESSGATE_SUBSCRIPTION_ID string = subscription().subscriptionId

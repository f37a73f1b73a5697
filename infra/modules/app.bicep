// The resource group's contents, wired together (main.bicep creates the group).
param location string
param tags object
param token string
param ingressMode string
param hostingPlan string
param alwaysReadyInstances int
param relayAudience string
param serviceNowInstanceUrl string
param serviceNowUsername string
param tenantId string

var functionAppName = 'func-accessgate-${token}'
var logicAppName = 'logic-accessgate-${token}'
var audience = empty(relayAudience) ? 'https://management.azure.com/' : relayAudience

module storage 'storage.bicep' = {
  name: 'storage'
  params: { location: location, tags: tags, name: 'stag${token}' }
}

module monitoring 'monitoring.bicep' = {
  name: 'monitoring'
  params: { location: location, tags: tags, token: token }
}

module vault 'keyvault.bicep' = {
  name: 'keyvault'
  params: { location: location, tags: tags, name: 'kv-ag-${token}', tenantId: tenantId }
}

module relay 'relay.bicep' = {
  name: 'relay'
  params: {
    location: location
    tags: tags
    name: logicAppName
    tenantId: tenantId
    forwardUrl: 'https://${functionAppName}.azurewebsites.net/api/elm'
    audience: audience
  }
}

var ingressSettings = ingressMode == 'relay' ? [
  { name: 'ACCESSGATE_INBOUND__MODE', value: 'relay' }
  { name: 'ACCESSGATE_INBOUND__RELAY_AUDIENCES', value: '["${audience}"]' }
  // Only the relay Logic App's own identity may forward.
  { name: 'ACCESSGATE_INBOUND__RELAY_CALLER_IDS', value: '["${relay.outputs.principalId}"]' }
] : [
  { name: 'ACCESSGATE_INBOUND__MODE', value: 'direct' }
]
var serviceNowSettings = empty(serviceNowInstanceUrl) ? [] : [
  { name: 'ACCESSGATE_SERVICENOW__INSTANCE_URL', value: serviceNowInstanceUrl }
  { name: 'ACCESSGATE_SERVICENOW__USERNAME', value: serviceNowUsername }
  // Key Vault references: App Service resolves them with the managed identity (Key Vault
  // Secrets User) into the process environment; no secret value is in the template.
  { name: 'ACCESSGATE_SERVICENOW__PASSWORD', value: '@Microsoft.KeyVault(VaultName=${vault.outputs.name};SecretName=servicenow-password)' }
  { name: 'ACCESSGATE_SERVICENOW__WEBHOOK_SECRET', value: '@Microsoft.KeyVault(VaultName=${vault.outputs.name};SecretName=servicenow-webhook)' }
]
// Storage endpoints end in "/"; accessgate's settings take the bare URL.
var queueUrl = storage.outputs.queueEndpoint
var tableUrl = storage.outputs.tableEndpoint
var accessgateSettings = concat([
  { name: 'ACCESSGATE_IDENTITY__TENANT_ID', value: tenantId }
  // No secret anywhere: Graph tokens come from the system-assigned managed identity.
  { name: 'ACCESSGATE_CREDENTIALS__MODE', value: 'managed_identity' }
  { name: 'ACCESSGATE_CREDENTIALS__KEY_VAULT_URL', value: vault.outputs.uri }
  { name: 'ACCESSGATE_QUEUE__BACKEND', value: 'azure_storage' }
  { name: 'ACCESSGATE_QUEUE__ACCOUNT_URL', value: endsWith(queueUrl, '/') ? substring(queueUrl, 0, length(queueUrl) - 1) : queueUrl }
  { name: 'ACCESSGATE_QUEUE__TABLE_ENDPOINT', value: endsWith(tableUrl, '/') ? substring(tableUrl, 0, length(tableUrl) - 1) : tableUrl }
  { name: 'ACCESSGATE_QUEUE__NAME', value: 'accessgate-jobs' }
  { name: 'ACCESSGATE_QUEUE__WAIT_TABLE', value: 'accessgatewaits' }
  { name: 'ACCESSGATE_LOG__FORMAT', value: 'json' }
  // Direct mode: Entra binds its PoP tokens to the Logic App the extension names. Relay mode:
  // the Logic App doctor checks (its trigger policy and forward).
  { name: 'ACCESSGATE_EXTENSIONS__ELM__RESOURCE', value: relay.outputs.id }
  // doctor reads the always-ready setting from the Function App itself.
  { name: 'ACCESSGATE_AZURE__FUNCTION_APP', value: resourceId('Microsoft.Web/sites', functionAppName) }
], ingressSettings, serviceNowSettings)

module function 'function.bicep' = {
  name: 'function'
  params: {
    location: location
    tags: tags
    name: functionAppName
    hostingPlan: hostingPlan
    alwaysReadyInstances: alwaysReadyInstances
    storageName: storage.outputs.name
    blobEndpoint: storage.outputs.blobEndpoint
    queueEndpoint: storage.outputs.queueEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainer: storage.outputs.deploymentContainer
    insightsConnectionString: monitoring.outputs.connectionString
    accessgateSettings: accessgateSettings
  }
}

module roles 'roles.bicep' = {
  name: 'roles'
  params: {
    principalId: function.outputs.principalId
    storageName: storage.outputs.name
    keyVaultName: vault.outputs.name
    insightsName: monitoring.outputs.insightsName
    logicAppName: relay.outputs.name
    functionAppName: function.outputs.name
  }
}

output functionAppName string = function.outputs.name
output url string = 'https://${function.outputs.hostName}'
output principalId string = function.outputs.principalId
output keyVaultUrl string = vault.outputs.uri
output logicAppResourceId string = relay.outputs.id
output logicAppName string = relay.outputs.name
output logicAppUrl string = relay.outputs.triggerUrl

// The Function App: the accessgate custom handler (host.json, function-app/*, one binary),
// Linux, system-assigned managed identity, HTTPS only. Flex Consumption keeps
// `alwaysReadyInstances` warm for the HTTP functions (ElmCallout, PimVerdict,
// ServiceNowEvents): Entra gives up on a callout after 200-2000 ms. Premium (EP1) stays warm
// by itself and runs the package from the deployment container with the managed identity.
param location string
param tags object
param name string
@allowed(['flex', 'premium'])
param hostingPlan string
param alwaysReadyInstances int
param storageName string
param blobEndpoint string
param queueEndpoint string
param tableEndpoint string
param deploymentContainer string
param insightsConnectionString string
@description('accessgate\'s settings (ACCESSGATE_*), as name/value pairs.')
param accessgateSettings array

var flex = hostingPlan == 'flex'

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy multiplies the always-ready cost and is not offered for every plan and region; enable it per deployment.
  name: 'plan-${name}'
  location: location
  tags: tags
  kind: flex ? 'functionapp' : 'elastic'
  sku: flex ? { name: 'FC1', tier: 'FlexConsumption' } : { name: 'EP1', tier: 'ElasticPremium' }
  properties: {
    reserved: true
    maximumElasticWorkerCount: flex ? null : 5
  }
}

// Identity-based host storage: no connection string anywhere (shared keys are off).
var hostSettings = [
  { name: 'AzureWebJobsStorage__accountName', value: storageName }
  { name: 'AzureWebJobsStorage__blobServiceUri', value: blobEndpoint }
  { name: 'AzureWebJobsStorage__queueServiceUri', value: queueEndpoint }
  { name: 'AzureWebJobsStorage__tableServiceUri', value: tableEndpoint }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: insightsConnectionString }
  // Entra-authenticated telemetry with the system-assigned identity (local auth is off).
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'Authorization=AAD' }
]
// Flex sets its runtime in functionAppConfig and refuses these two; Premium needs them, and
// runs the package straight from the deployment container with its identity (no file share,
// which would need a shared key).
var premiumSettings = flex ? [] : [
  { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
  { name: 'FUNCTIONS_WORKER_RUNTIME', value: 'custom' }
  { name: 'WEBSITE_RUN_FROM_PACKAGE', value: '${blobEndpoint}${deploymentContainer}/accessgate-functions.zip' }
  { name: 'WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID', value: 'SystemAssigned' }
]

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Entra (direct mode), the relay Logic App, PIM and ServiceNow call the HTTP functions from the internet; every call is authenticated by accessgate itself.
  // checkov:skip=CKV_AZURE_17: none of Entra, PIM, the Logic App or ServiceNow presents a client certificate; callers are authenticated by their signed tokens.
  // checkov:skip=CKV_AZURE_212: always-ready instances (Flex) or Premium's minimum keep the HTTP functions warm; more is a cost choice (alwaysReadyInstances).
  // checkov:skip=CKV_AZURE_213: the Functions host manages its instances' health; the handler's GET / is the host's readiness probe, not a public route.
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: { type: 'SystemAssigned' }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      alwaysOn: false
      appSettings: concat(hostSettings, premiumSettings, accessgateSettings)
    }
    functionAppConfig: flex ? {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainer}'
          authentication: { type: 'SystemAssignedIdentity' }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: 512
        maximumInstanceCount: 40
        // The HTTP functions share the `http` group: at least one instance is always warm.
        alwaysReady: [ { name: 'http', instanceCount: alwaysReadyInstances } ]
      }
      runtime: { name: 'custom', version: '1.0' }
    } : null
  }
}

output name string = site.name
output principalId string = site.identity.principalId
output hostName string = site.properties.defaultHostName

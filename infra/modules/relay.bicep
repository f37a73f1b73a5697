// The relay Logic App (Consumption). Entra's custom extension names it (a
// logicAppTriggerEndpointConfiguration) and binds its PoP tokens to its resource id (`p`).
// Relay mode: the trigger's AADPOP policy (Microsoft's sample, ../shared/data
// elm-logicapp-aadpop-policy.json) admits only entitlement management's signed requests, the
// trigger answers 202 at once, and an HTTP action forwards the body to accessgate with the
// Logic App's managed identity (inbound.mode = "relay"). Direct mode: the extension's `url`
// points at accessgate, and this Logic App only anchors the binding (it is never called).
param location string
param tags object
param name string
param tenantId string
@description('https://<function app host>/api/elm')
param forwardUrl string
@description('The audience of the managed identity token the HTTP action sends.')
param audience string

// Entitlement management's first-party app id (protocol.md §4.2).
var elmAppId = '810dcf14-1858-4bf2-8134-4c369fa3235b'

resource relay 'Microsoft.Logic/workflows@2019-05-01' = {
  name: name
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    state: 'Enabled'
    accessControl: {
      triggers: {
        openAuthenticationPolicies: {
          policies: {
            AzureADEntitlementManagementPOPAuthPolicy: {
              type: 'AADPOP'
              claims: [
                { name: 'iss', value: 'https://sts.windows.net/${tenantId}/' }
                { name: 'appid', value: elmAppId }
                { name: 'm', value: 'POST' }
                { name: 'u', value: 'management.azure.com' }
                { name: 'p', value: '${resourceGroup().id}/providers/Microsoft.Logic/workflows/${name}' }
              ]
            }
          }
        }
      }
    }
    definition: {
      '$schema': 'https://schema.management.azure.com/providers/Microsoft.Logic/schemas/2016-06-01/workflowdefinition.json#'
      contentVersion: '1.0.0.0'
      triggers: {
        manual: {
          type: 'Request'
          kind: 'Http'
          inputs: { schema: { type: 'object' } }
        }
      }
      actions: {
        forward_to_accessgate: {
          type: 'Http'
          runAfter: {}
          inputs: {
            method: 'POST'
            uri: forwardUrl
            headers: {
              'Content-Type': 'application/json'
              // The correlation id accessgate logs and answers with.
              'client-request-id': '@{workflow()?[\'run\']?[\'name\']}'
            }
            body: '@triggerBody()'
            authentication: {
              type: 'ManagedServiceIdentity'
              audience: audience
            }
            retryPolicy: {
              type: 'exponential'
              count: 6
              interval: 'PT10S'
              minimumInterval: 'PT5S'
              maximumInterval: 'PT5M'
            }
          }
        }
      }
    }
  }
}

output id string = relay.id
output name string = relay.name
output principalId string = relay.identity.principalId
// The trigger's URL without its SAS signature (basePath + api-version): what the extension's
// logicAppTriggerEndpointConfiguration.url names (Entra signs with PoP; SAS is disabled above).
#disable-next-line outputs-should-not-contain-secrets // basePath carries no signature
output triggerUrl string = '${listCallbackUrl('${relay.id}/triggers/manual', '2019-05-01').basePath}?api-version=2016-10-01'

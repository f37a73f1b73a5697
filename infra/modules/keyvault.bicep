// Key Vault in RBAC mode (no access policies): the ServiceNow password and webhook secret
// (servicenow-password, servicenow-webhook: Key Vault references in the app settings), and the
// certificate of the app registration's client assertion when credentials.mode =
// "key_vault_certificate".
param location string
param tags object
param name string
param tenantId string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: the Function App has no VNet integration by default and reaches the vault over its public endpoint; access is Entra RBAC only (no access policies, no keys). Add a private endpoint with VNet integration where the network allows.
  // checkov:skip=CKV_AZURE_189: as above: public network access is what a Function App without VNet integration needs.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: { defaultAction: 'Allow', bypass: 'AzureServices' }
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri

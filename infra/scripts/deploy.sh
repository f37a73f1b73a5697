#!/bin/sh
# azd postprovision hook: builds the package against glibc 2.28 and zip-deploys it to the
# Function App that infra/ created (its name is an azd output). Needs the Azure CLI, signed in.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
app=${ACCESSGATE_FUNCTION_APP_NAME:?run through azd: the Function App name is an output of infra/main.bicep}
group=${AZURE_RESOURCE_GROUP:?run through azd}
ACCESSGATE_ZIGBUILD=${ACCESSGATE_ZIGBUILD:-1} bash "$root/function-app/package.sh" "$root/target/accessgate-functions.zip"
# One deploy for Flex and Premium; the zip keeps the executable bit (function-app/package.sh).
az functionapp deployment source config-zip --resource-group "$group" --name "$app" \
  --src "$root/target/accessgate-functions.zip"
echo "deployed to https://$app.azurewebsites.net"
echo "next: azd env get-values > outputs.env"
echo "      accessgate setup --file examples/setup.toml --outputs outputs.env --device-code --plan   (docs/setup.md)"

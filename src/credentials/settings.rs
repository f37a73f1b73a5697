//! `[identity]` (tenant, authority, national cloud) and `[credentials]` (how accessgate proves its
//! identity to Entra for Graph, Storage and Key Vault tokens).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::endpoint::EndpointUrl;
use crate::secret::Secret;
use crate::settings::{self, Problems};

/// A national cloud: the identity, Graph and Key Vault hosts that belong together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cloud {
    pub authority: &'static str,
    pub graph: &'static str,
    pub key_vault: &'static str,
    /// Azure Resource Manager (what `doctor` reads the relay and the Function App from).
    pub management: &'static str,
}

impl Cloud {
    pub const GLOBAL: Cloud = Cloud {
        authority: "https://login.microsoftonline.com",
        graph: "https://graph.microsoft.com",
        key_vault: "https://vault.azure.net",
        management: "https://management.azure.com",
    };

    pub fn named(name: &str) -> Option<Cloud> {
        let c = match name {
            "global" => Self::GLOBAL,
            "usgov" => Cloud {
                authority: "https://login.microsoftonline.us",
                graph: "https://graph.microsoft.us",
                key_vault: "https://vault.usgovcloudapi.net",
                management: "https://management.usgovcloudapi.net",
            },
            "usgov-dod" => Cloud {
                authority: "https://login.microsoftonline.us",
                graph: "https://dod-graph.microsoft.us",
                key_vault: "https://vault.usgovcloudapi.net",
                management: "https://management.usgovcloudapi.net",
            },
            "china" => Cloud {
                authority: "https://login.chinacloudapi.cn",
                graph: "https://microsoftgraph.chinacloudapi.cn",
                key_vault: "https://vault.azure.cn",
                management: "https://management.chinacloudapi.cn",
            },
            _ => return None,
        };
        Some(c)
    }

    /// `identity.cloud`; an unknown name is a problem and the global cloud's hosts stand in, so
    /// the other sections still validate.
    pub fn from_raw(raw: &RawIdentity, p: &mut Problems) -> Cloud {
        let name = raw.cloud.as_deref().unwrap_or("global");
        Cloud::named(name).unwrap_or_else(|| {
            settings::not_one_of(
                p,
                "identity.cloud",
                name,
                "must be one of global, usgov, usgov-dod, china",
                &["global", "usgov", "usgov-dod", "china"],
            );
            Self::GLOBAL
        })
    }
}

/// `[identity]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawIdentity {
    cloud: Option<String>,
    authority: Option<String>,
    tenant_id: Option<String>,
}

/// Keys of `[identity]` whose environment values stay strings (`config` layers them verbatim).
pub const IDENTITY_STRING_KEYS: &[&str] = &["cloud", "authority", "tenant_id"];

/// `[identity]`, validated.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub authority: EndpointUrl,
    pub tenant_id: uuid::Uuid,
}

impl IdentitySettings {
    /// `None` when the authority or the tenant is unusable (the problems say which).
    pub fn from_raw(raw: RawIdentity, cloud: &Cloud, p: &mut Problems) -> Option<IdentitySettings> {
        let authority = settings::endpoint(
            p,
            "identity.authority",
            raw.authority.as_deref().unwrap_or(cloud.authority),
        );
        let tenant_id = match raw.tenant_id.as_deref() {
            None | Some("") => {
                p.push(
                    "identity.tenant_id",
                    "required: the directory (tenant) id that sends the callouts",
                );
                None
            }
            Some(t) => p.check(
                "identity.tenant_id",
                uuid::Uuid::parse_str(t)
                    .map_err(|_| "must be a GUID (directory id), not a domain name".to_string()),
            ),
        };
        Some(IdentitySettings {
            authority: authority?,
            tenant_id: tenant_id?,
        })
    }
}

/// `[credentials]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    mode: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    managed_identity_client_id: Option<String>,
    federated_token_file: Option<String>,
    key_vault_url: Option<String>,
    secret_name: Option<String>,
    certificate_name: Option<String>,
    sign_with: Option<String>,
}

/// Keys of `[credentials]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &[
    "mode",
    "client_id",
    "client_secret",
    "managed_identity_client_id",
    "federated_token_file",
    "key_vault_url",
    "secret_name",
    "certificate_name",
    "sign_with",
];

/// How accessgate proves its identity to Entra for Graph (and Storage) tokens.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: CredentialMode,
    /// User-assigned managed identity (client id) for the managed-identity token requests;
    /// `None` = system-assigned.
    pub managed_identity_client_id: Option<String>,
    /// The Key Vault token audience of the configured cloud (`https://vault.azure.net`).
    pub key_vault_resource: String,
    pub platform: Platform,
}

/// The credential modes (README "Credentials").
#[derive(Debug, Clone)]
pub enum CredentialMode {
    /// An app registration's client secret, from the config or the environment.
    ClientSecret { client_id: String, secret: Secret },
    /// The App Service / Functions managed identity is the Graph identity.
    ManagedIdentity,
    /// Workload identity federation: a projected token file is the client assertion.
    WorkloadIdentity {
        client_id: String,
        token_file: Option<PathBuf>,
    },
    /// An app registration whose client secret lives in Key Vault (read with the managed identity).
    KeyVaultSecret {
        client_id: String,
        vault: EndpointUrl,
        secret_name: String,
    },
    /// An app registration with a certificate in Key Vault: RFC 7523 client assertion.
    KeyVaultCertificate {
        client_id: String,
        vault: EndpointUrl,
        certificate_name: String,
        sign_with: SignWith,
    },
}

impl CredentialMode {
    pub fn name(&self) -> &'static str {
        match self {
            Self::ClientSecret { .. } => "client_secret",
            Self::ManagedIdentity => "managed_identity",
            Self::WorkloadIdentity { .. } => "workload_identity",
            Self::KeyVaultSecret { .. } => "key_vault_secret",
            Self::KeyVaultCertificate { .. } => "key_vault_certificate",
        }
    }
    /// The Key Vault of the Key Vault modes (where other secrets, such as ServiceNow's, live).
    pub fn vault(&self) -> Option<&EndpointUrl> {
        match self {
            Self::KeyVaultSecret { vault, .. } | Self::KeyVaultCertificate { vault, .. } => {
                Some(vault)
            }
            _ => None,
        }
    }
    /// The app registration's client id, for the modes that have one.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Self::ClientSecret { client_id, .. }
            | Self::WorkloadIdentity { client_id, .. }
            | Self::KeyVaultSecret { client_id, .. }
            | Self::KeyVaultCertificate { client_id, .. } => Some(client_id),
            Self::ManagedIdentity => None,
        }
    }
    pub fn uses_managed_identity(&self) -> bool {
        matches!(
            self,
            Self::ManagedIdentity | Self::KeyVaultSecret { .. } | Self::KeyVaultCertificate { .. }
        )
    }
}

/// Where a client assertion is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignWith {
    /// With the certificate's private key, read from Key Vault (the key must be exportable).
    Local,
    /// By Key Vault's `sign` operation: the private key never leaves the vault.
    KeyVault,
}

/// What the hosting platform tells us through its environment.
#[derive(Debug, Clone, Default)]
pub struct Platform {
    /// `IDENTITY_ENDPOINT` (App Service / Functions managed identity).
    pub identity_endpoint: Option<EndpointUrl>,
    /// `IDENTITY_HEADER`: the managed identity endpoint's shared secret.
    pub identity_header: Option<Secret>,
}

/// Platform variables (set by App Service / Functions / AKS, not by the operator) that the
/// credential modes read.
pub const PLATFORM_ENV: &[&str] = &[
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_ID",
];

impl Platform {
    /// Reads [`PLATFORM_ENV`] from `env` (the variables `config` collected).
    pub fn from_env(env: &BTreeMap<String, String>, p: &mut Problems) -> Platform {
        let identity_endpoint = match env.get("IDENTITY_ENDPOINT").map(String::as_str) {
            None | Some("") => None,
            Some(v) => match EndpointUrl::parse(v) {
                Ok(u) => Some(u),
                Err(e) => {
                    p.push(
                        "IDENTITY_ENDPOINT",
                        &format!("the managed identity endpoint is not usable: {e}"),
                    );
                    None
                }
            },
        };
        Platform {
            identity_endpoint,
            identity_header: env
                .get("IDENTITY_HEADER")
                .filter(|v| !v.is_empty())
                .map(|v| Secret::new(v.clone())),
        }
    }
}

impl Settings {
    /// Validates `[credentials]`; `env` holds the platform variables, relative paths resolve
    /// against `base_dir`, `cloud` gives the Key Vault audience.
    pub fn from_raw(
        raw: Raw,
        env: &BTreeMap<String, String>,
        base_dir: &Path,
        cloud: &Cloud,
        p: &mut Problems,
    ) -> Settings {
        let platform = Platform::from_env(env, p);
        let mi_client_id = settings::guid(
            p,
            "credentials.managed_identity_client_id",
            raw.managed_identity_client_id.as_deref(),
            "the client id of a user-assigned managed identity",
        );
        let client_id = || {
            raw.client_id
                .clone()
                .or_else(|| env.get("AZURE_CLIENT_ID").cloned())
        };
        let require_client_id = |p: &mut Problems| -> String {
            settings::guid(
                p,
                "credentials.client_id",
                client_id().as_deref(),
                "the application (client) id of the app registration accessgate uses for Graph",
            )
            .unwrap_or_else(|| {
                if client_id().unwrap_or_default().is_empty() {
                    p.push(
                        "credentials.client_id",
                        "required for this credentials.mode: the application (client) id of the app registration",
                    );
                }
                String::new()
            })
        };
        let vault = |p: &mut Problems| -> Option<EndpointUrl> {
            match raw.key_vault_url.as_deref() {
                None | Some("") => {
                    p.push(
                        "credentials.key_vault_url",
                        "required for this credentials.mode: the vault URL, e.g. https://myvault.vault.azure.net",
                    );
                    None
                }
                Some(v) => settings::endpoint(p, "credentials.key_vault_url", v),
            }
        };
        let name = |p: &mut Problems, setting: &str, v: &Option<String>| -> String {
            let v = v.clone().unwrap_or_default();
            // Key Vault object names: 1-127 of letters, digits and dashes.
            if v.is_empty()
                || v.len() > 127
                || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                p.push(
                    setting,
                    "required for this credentials.mode: a Key Vault object name (letters, digits, dashes)",
                );
            }
            v
        };
        let mode_name = raw.mode.as_deref().unwrap_or("client_secret");
        let mode = match mode_name {
            "client_secret" => {
                let client_id = require_client_id(p);
                let secret = raw.client_secret.clone().unwrap_or_default();
                if secret.is_empty() {
                    p.push(
                        "credentials.client_secret",
                        "required in client_secret mode: set it with ACCESSGATE_CREDENTIALS__CLIENT_SECRET rather than in the file (or keep it in Key Vault: credentials.mode = \"key_vault_secret\")",
                    );
                }
                CredentialMode::ClientSecret { client_id, secret }
            }
            "managed_identity" => CredentialMode::ManagedIdentity,
            "workload_identity" => {
                let client_id = require_client_id(p);
                let token_file = raw
                    .federated_token_file
                    .clone()
                    .or_else(|| env.get("AZURE_FEDERATED_TOKEN_FILE").cloned())
                    .filter(|f| !f.is_empty())
                    .map(|f| settings::resolve(base_dir, &f));
                if token_file.is_none() {
                    p.warn(
                        "credentials.federated_token_file",
                        "AZURE_FEDERATED_TOKEN_FILE is not set: enable workload identity on the pod (label azure.workload.identity/use: \"true\") or set this setting; Graph calls wait until then",
                    );
                }
                CredentialMode::WorkloadIdentity {
                    client_id,
                    token_file,
                }
            }
            "key_vault_secret" => {
                let client_id = require_client_id(p);
                let v = vault(p);
                let secret_name = name(p, "credentials.secret_name", &raw.secret_name);
                match v {
                    Some(vault) => CredentialMode::KeyVaultSecret {
                        client_id,
                        vault,
                        secret_name,
                    },
                    None => CredentialMode::ManagedIdentity,
                }
            }
            "key_vault_certificate" => {
                let client_id = require_client_id(p);
                let v = vault(p);
                let certificate_name =
                    name(p, "credentials.certificate_name", &raw.certificate_name);
                let sign_with = match raw.sign_with.as_deref().unwrap_or("key_vault") {
                    "key_vault" => SignWith::KeyVault,
                    "local" => SignWith::Local,
                    other => {
                        settings::not_one_of(
                            p,
                            "credentials.sign_with",
                            other,
                            "must be key_vault or local",
                            &["key_vault", "local"],
                        );
                        SignWith::KeyVault
                    }
                };
                match v {
                    Some(vault) => CredentialMode::KeyVaultCertificate {
                        client_id,
                        vault,
                        certificate_name,
                        sign_with,
                    },
                    None => CredentialMode::ManagedIdentity,
                }
            }
            other => {
                const MODES: [&str; 5] = [
                    "client_secret",
                    "managed_identity",
                    "workload_identity",
                    "key_vault_secret",
                    "key_vault_certificate",
                ];
                settings::not_one_of(
                    p,
                    "credentials.mode",
                    other,
                    &format!("must be one of {}", MODES.join(", ")),
                    &MODES,
                );
                CredentialMode::ManagedIdentity
            }
        };
        if mode_name != "client_secret" && raw.client_secret.is_some() {
            p.push(
                "credentials.client_secret",
                &format!("not used in {mode_name} mode: remove it"),
            );
        }
        if mode.uses_managed_identity() && platform.identity_endpoint.is_none() {
            p.warn(
                "IDENTITY_ENDPOINT",
                &format!(
                    "credentials.mode = {mode_name} needs the managed identity, but IDENTITY_ENDPOINT is not set: turn on the managed identity of the Function App / App Service; callouts are acknowledged and wait in the queue until then"
                ),
            );
        }
        Settings {
            mode,
            managed_identity_client_id: mi_client_id,
            key_vault_resource: cloud.key_vault.to_owned(),
            platform,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ConfigProblem;

    const APP: &str = "aaaaaaaa-0000-0000-0000-000000000001";

    /// `[credentials]` from `lines` with the platform variables `vars`: the settings and the
    /// warnings, or the problems.
    fn creds(
        lines: &str,
        vars: &[(&str, &str)],
    ) -> Result<(Settings, Vec<ConfigProblem>), Vec<ConfigProblem>> {
        let raw: Raw = toml::from_str(lines).unwrap();
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut p = Problems::default();
        let s = Settings::from_raw(
            raw,
            &env,
            Path::new("/etc/accessgate"),
            &Cloud::GLOBAL,
            &mut p,
        );
        match p.into_parts() {
            (errors, warnings) if errors.is_empty() => Ok((s, warnings)),
            (errors, _) => Err(errors),
        }
    }

    #[test]
    fn every_credential_mode_parses() {
        let mi = [
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token"),
            ("IDENTITY_HEADER", "hdr-secret"),
        ];
        let (c, warnings) = creds("mode = \"managed_identity\"", &mi).unwrap();
        assert!(matches!(c.mode, CredentialMode::ManagedIdentity));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(!format!("{c:?}").contains("hdr-secret"));

        let (c, _) = creds(
            &format!("mode = \"key_vault_certificate\"\nclient_id = \"{APP}\"\nkey_vault_url = \"https://v.vault.azure.net\"\ncertificate_name = \"graph-cert\""),
            &mi,
        )
        .unwrap();
        match &c.mode {
            CredentialMode::KeyVaultCertificate {
                sign_with,
                certificate_name,
                ..
            } => {
                assert_eq!(
                    *sign_with,
                    SignWith::KeyVault,
                    "the key stays in the vault by default"
                );
                assert_eq!(certificate_name, "graph-cert");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.key_vault_resource, "https://vault.azure.net");

        let (c, _) = creds(
            "mode = \"workload_identity\"",
            &[
                ("AZURE_CLIENT_ID", APP),
                (
                    "AZURE_FEDERATED_TOKEN_FILE",
                    "/var/run/secrets/azure/tokens/azure-identity-token",
                ),
            ],
        )
        .unwrap();
        match &c.mode {
            CredentialMode::WorkloadIdentity {
                client_id,
                token_file,
            } => {
                assert_eq!(client_id, APP);
                assert!(token_file.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credential_problems_name_their_setting() {
        let errs = creds("mode = \"key_vault_secret\"", &[])
            .err()
            .unwrap_or_default();
        for s in [
            "credentials.client_id",
            "credentials.key_vault_url",
            "credentials.secret_name",
        ] {
            assert!(
                errs.iter().any(|p| p.setting == s),
                "missing {s} in {errs:?}"
            );
        }
        let errs = creds(
            &format!("mode = \"key_vault_secret\"\nclient_id = \"{APP}\"\nkey_vault_url = \"http://vault.example.com\"\nsecret_name = \"a b\"\nclient_secret = \"x\""),
            &[],
        )
        .err()
        .unwrap_or_default();
        for s in [
            "credentials.key_vault_url",
            "credentials.secret_name",
            "credentials.client_secret",
        ] {
            assert!(
                errs.iter().any(|p| p.setting == s),
                "missing {s} in {errs:?}"
            );
        }
        let errs = creds("mode = \"magic\"", &[]).err().unwrap_or_default();
        assert!(
            errs.iter().any(|p| p.setting == "credentials.mode"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_missing_managed_identity_is_a_warning_not_a_failure() {
        let (_, warnings) = creds("mode = \"managed_identity\"", &[]).unwrap();
        assert!(
            warnings.iter().any(|w| w.setting == "IDENTITY_ENDPOINT"),
            "{warnings:?}"
        );
        // Plain http off the machine is refused for the identity endpoint too.
        let errs = creds(
            "mode = \"managed_identity\"",
            &[("IDENTITY_ENDPOINT", "http://169.254.169.254/msi/token")],
        )
        .err()
        .unwrap_or_default();
        assert!(
            errs.iter().any(|p| p.setting == "IDENTITY_ENDPOINT"),
            "{errs:?}"
        );
    }
}

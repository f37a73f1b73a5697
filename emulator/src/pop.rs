//! Proof-of-possession signed HTTP requests (SHR) as Entra sends them with custom-extension
//! callouts: `Authorization: PoP <jws>` (protocol.md §4.4, shared/data/pop-construction.md).
//!
//! Header `{"typ":"pop","alg":"RS256","kid":<RFC 7638 thumbprint>}`; payload
//! `{"at","ts","m","u","p","nonce","cnf":{"jwk"}}` in that order; the inner access token `at` is
//! an ordinary callout token for `https://management.azure.com` whose `cnf` names the key
//! (`{"kid":<thumbprint>,"xms_ksl":"sw"}`, what Entra issues for MSAL's `req_cnf`). Every part can
//! be overridden or removed so tests can build each forgery of the security corpus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaEncoding};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::entra::{MintOptions, b64url, mint_callout_token};
use crate::state::Shared;

/// The audience of the access token inside a PoP token.
pub const POP_AUDIENCE: &str = "https://management.azure.com";

/// Kinds of PoP key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PopKeyKind {
    /// RSA 2048 (what MSAL generates).
    #[default]
    Rsa2048,
    /// RSA 4096.
    Rsa4096,
    /// A 1024-bit RSA *public* key only: aws-lc-rs does not generate keys that weak, and a
    /// receiver must refuse the key before it checks any signature, so its "signatures" are
    /// random bytes.
    Rsa1024,
    /// EC P-256 (ES256).
    Ecp256,
}

enum Material {
    Rsa(KeyPair),
    Ec(EcdsaKeyPair),
    PublicOnly,
}

/// A PoP key pair with its public JWK and thumbprint.
pub struct PopKey {
    kind: PopKeyKind,
    material: Material,
    /// Public JWK members in canonical (RFC 7638) order, without `alg`/`kid`.
    canonical: Vec<(&'static str, String)>,
    thumbprint: String,
}

impl std::fmt::Debug for PopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PopKey")
            .field("kind", &self.kind)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

fn rsa_canonical(n: &[u8], e: &[u8]) -> Vec<(&'static str, String)> {
    vec![("e", b64url(e)), ("kty", "RSA".into()), ("n", b64url(n))]
}

impl PopKey {
    /// Generates a key (RSA keygen takes tens of milliseconds).
    pub fn generate(kind: PopKeyKind) -> anyhow::Result<Self> {
        let (material, canonical) = match kind {
            PopKeyKind::Rsa2048 | PopKeyKind::Rsa4096 => {
                let size = if kind == PopKeyKind::Rsa2048 {
                    KeySize::Rsa2048
                } else {
                    KeySize::Rsa4096
                };
                let pair = KeyPair::generate(size).map_err(|_| anyhow!("RSA keygen failed"))?;
                let public = pair.public_key();
                let canonical = rsa_canonical(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                );
                (Material::Rsa(pair), canonical)
            }
            PopKeyKind::Rsa1024 => {
                // An odd 1024-bit modulus with the top bit set: a well-formed, weak public key.
                let mut n = [0u8; 128];
                aws_lc_rs::rand::fill(&mut n).map_err(|_| anyhow!("random failed"))?;
                n[0] |= 0x80;
                n[127] |= 1;
                (Material::PublicOnly, rsa_canonical(&n, &[1, 0, 1]))
            }
            PopKeyKind::Ecp256 => {
                let pair = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| anyhow!("EC keygen failed"))?;
                let point = pair.public_key().as_ref().to_vec();
                if point.len() != 65 {
                    bail!("unexpected EC public key encoding");
                }
                let canonical = vec![
                    ("crv", "P-256".to_owned()),
                    ("kty", "EC".into()),
                    ("x", b64url(&point[1..33])),
                    ("y", b64url(&point[33..65])),
                ];
                (Material::Ec(pair), canonical)
            }
        };
        let text = format!(
            "{{{}}}",
            canonical
                .iter()
                .map(|(k, v)| format!("\"{k}\":\"{v}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let thumbprint = b64url(&Sha256::digest(text.as_bytes()));
        Ok(PopKey {
            kind,
            material,
            canonical,
            thumbprint,
        })
    }

    pub fn kind(&self) -> PopKeyKind {
        self.kind
    }

    /// RFC 7638 thumbprint (base64url).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The default `alg` for this key.
    pub fn default_alg(&self) -> &'static str {
        match self.kind {
            PopKeyKind::Ecp256 => "ES256",
            _ => "RS256",
        }
    }

    /// The public JWK as MSAL/kubelogin put it in `cnf.jwk`: canonical members plus `alg`, `kid`.
    pub fn public_jwk(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.canonical {
            m.insert((*k).to_owned(), Value::String(v.clone()));
        }
        m.insert("alg".into(), json!(self.default_alg()));
        m.insert("kid".into(), json!(self.thumbprint));
        Value::Object(m)
    }

    /// The canonical public JWK text (what the thumbprint hashes).
    pub fn canonical_jwk(&self) -> String {
        let m: Map<String, Value> = self
            .canonical
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
            .collect();
        Value::Object(m).to_string()
    }

    /// Signs `message` as JWS `alg`. RS256/PS256 need an RSA key, ES256 an EC key; HS256/384/512
    /// use the canonical public JWK text as the HMAC secret (the classic algorithm-confusion
    /// forgery). A key that cannot make the signature (the 1024-bit public-only key, or an alg
    /// that does not fit the key) yields random bytes of a plausible length.
    pub fn sign(&self, alg: &str, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let rng = SystemRandom::new();
        let rsa: Option<&'static dyn RsaEncoding> = match alg {
            "RS256" => Some(&signature::RSA_PKCS1_SHA256),
            "RS384" => Some(&signature::RSA_PKCS1_SHA384),
            "RS512" => Some(&signature::RSA_PKCS1_SHA512),
            "PS256" => Some(&signature::RSA_PSS_SHA256),
            "PS384" => Some(&signature::RSA_PSS_SHA384),
            "PS512" => Some(&signature::RSA_PSS_SHA512),
            _ => None,
        };
        let hmac = match alg {
            "HS256" => Some(aws_lc_rs::hmac::HMAC_SHA256),
            "HS384" => Some(aws_lc_rs::hmac::HMAC_SHA384),
            "HS512" => Some(aws_lc_rs::hmac::HMAC_SHA512),
            _ => None,
        };
        if let Some(h) = hmac {
            let key = aws_lc_rs::hmac::Key::new(h, self.canonical_jwk().as_bytes());
            return Ok(aws_lc_rs::hmac::sign(&key, message).as_ref().to_vec());
        }
        match (&self.material, rsa, alg) {
            (Material::Rsa(pair), Some(enc), _) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(enc, &rng, message, &mut sig)
                    .map_err(|_| anyhow!("RSA signing failed"))?;
                Ok(sig)
            }
            (Material::Ec(pair), _, "ES256") => Ok(pair
                .sign(&rng, message)
                .map_err(|_| anyhow!("EC signing failed"))?
                .as_ref()
                .to_vec()),
            _ => {
                let len = if self.kind == PopKeyKind::Ecp256 {
                    64
                } else {
                    256
                };
                let mut junk = vec![0u8; len];
                aws_lc_rs::rand::fill(&mut junk).map_err(|_| anyhow!("random failed"))?;
                Ok(junk)
            }
        }
    }

    /// A compact JWS from raw JSON texts (so tests can send duplicated members or odd bytes).
    pub fn sign_compact(
        &self,
        alg: &str,
        header_json: &str,
        payload_json: &str,
    ) -> anyhow::Result<String> {
        let input = format!(
            "{}.{}",
            b64url(header_json.as_bytes()),
            b64url(payload_json.as_bytes())
        );
        let sig = self.sign(alg, input.as_bytes())?;
        Ok(format!("{input}.{}", b64url(&sig)))
    }
}

/// Cached PoP keys of an emulator: one per kind, plus a second ("other") key per kind.
#[derive(Default)]
pub(crate) struct PopKeys {
    keys: Mutex<HashMap<(PopKeyKind, bool), Arc<PopKey>>>,
}

impl PopKeys {
    pub(crate) fn get(&self, kind: PopKeyKind, other: bool) -> anyhow::Result<Arc<PopKey>> {
        if let Some(k) = self
            .keys
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .get(&(kind, other))
        {
            return Ok(k.clone());
        }
        // Generated outside the lock; two racing callers both generate, one wins: harmless.
        let key = Arc::new(PopKey::generate(kind)?);
        let mut g = self.keys.lock().map_err(|_| anyhow!("poisoned"))?;
        Ok(g.entry((kind, other)).or_insert(key).clone())
    }
}

/// Options of `POST /_emulator/tokens/pop` and [`crate::Emulator::mint_pop`]. Every field is
/// optional; `Value` overrides replace the member, JSON `null` removes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PopOptions {
    /// How to mint the inner access token (`audience` defaults to `https://management.azure.com`;
    /// its `extra_claims` merge last and can remove `cnf`).
    pub at: Option<MintOptions>,
    /// Use this inner token verbatim instead of minting one.
    pub at_token: Option<String>,
    /// The inner token's `cnf` (default `{"kid":<thumbprint>,"xms_ksl":"sw"}`; null removes).
    pub at_cnf: Option<Value>,
    /// The PoP key (default rsa2048, cached per emulator).
    pub key: Option<PopKeyKind>,
    /// Header `alg` and signing algorithm (default RS256, ES256 for EC keys; `none` = empty
    /// signature).
    pub alg: Option<String>,
    /// Header `typ` (default `pop`).
    pub typ: Option<Value>,
    /// Header `kid` (default the thumbprint).
    pub kid: Option<Value>,
    /// Merged into the header last.
    pub header_extra: Option<Map<String, Value>>,
    /// `ts` = now + this (default 0).
    pub ts_offset_secs: Option<i64>,
    /// `ts` verbatim (overrides `ts_offset_secs`).
    pub ts: Option<Value>,
    /// `m` (default `POST`).
    pub m: Option<Value>,
    /// `u` (default the configured `pop_host`).
    pub u: Option<Value>,
    /// `p` (default the configured `logic_app_resource`).
    pub p: Option<Value>,
    /// `nonce` (default a GUID without dashes).
    pub nonce: Option<Value>,
    /// `cnf` (default `{"jwk": <public JWK>}`).
    pub cnf: Option<Value>,
    /// Merged into the payload last.
    pub claims_extra: Option<Map<String, Value>>,
    /// Sign with another key of the same kind than the one in `cnf`.
    pub sign_with_other_key: bool,
    /// Flip one byte of the signature.
    pub tamper_signature: bool,
    /// Empty signature segment (header `alg` unchanged).
    pub unsigned: bool,
}

/// `None` keeps the default, `Some(null)` removes, anything else replaces.
fn put(m: &mut Map<String, Value>, k: &str, over: &Option<Value>, default: Value) {
    match over {
        None => {
            m.insert(k.to_owned(), default);
        }
        Some(Value::Null) => {
            m.remove(k);
        }
        Some(v) => {
            m.insert(k.to_owned(), v.clone());
        }
    }
}

fn merge(m: &mut Map<String, Value>, extra: &Option<Map<String, Value>>) {
    for (k, v) in extra.iter().flatten() {
        if v.is_null() {
            m.remove(k);
        } else {
            m.insert(k.clone(), v.clone());
        }
    }
}

/// Mints a signed request (see [`PopOptions`]).
pub(crate) fn mint_pop(state: &Shared, opts: &PopOptions) -> anyhow::Result<String> {
    let kind = opts.key.unwrap_or_default();
    let key = state.pop_keys.get(kind, false)?;
    let at = match &opts.at_token {
        Some(t) => t.clone(),
        None => {
            let mut m = opts.at.clone().unwrap_or_default();
            m.audience.get_or_insert_with(|| POP_AUDIENCE.to_owned());
            // The binding first; the caller's own extra claims (where null removes) win.
            let mut extra = Map::new();
            let cnf = opts
                .at_cnf
                .clone()
                .unwrap_or_else(|| json!({"kid": key.thumbprint(), "xms_ksl": "sw"}));
            extra.insert("cnf".into(), cnf);
            for (k, v) in m.extra_claims.take().into_iter().flatten() {
                extra.insert(k, v);
            }
            m.extra_claims = Some(extra);
            mint_callout_token(state, &m)?
        }
    };
    let alg = opts
        .alg
        .clone()
        .unwrap_or_else(|| key.default_alg().to_owned());

    let mut header = Map::new();
    put(&mut header, "typ", &opts.typ, json!("pop"));
    header.insert("alg".into(), json!(alg));
    put(&mut header, "kid", &opts.kid, json!(key.thumbprint()));
    merge(&mut header, &opts.header_extra);

    let now = jiff::Timestamp::now().as_second();
    let mut claims = Map::new();
    claims.insert("at".into(), json!(at));
    put(
        &mut claims,
        "ts",
        &opts.ts,
        json!(now + opts.ts_offset_secs.unwrap_or(0)),
    );
    put(&mut claims, "m", &opts.m, json!("POST"));
    put(&mut claims, "u", &opts.u, json!(state.cfg.pop_host));
    put(
        &mut claims,
        "p",
        &opts.p,
        json!(state.cfg.logic_app_resource),
    );
    put(
        &mut claims,
        "nonce",
        &opts.nonce,
        json!(uuid::Uuid::new_v4().simple().to_string()),
    );
    put(
        &mut claims,
        "cnf",
        &opts.cnf,
        json!({"jwk": key.public_jwk()}),
    );
    merge(&mut claims, &opts.claims_extra);

    let input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&Value::Object(header))?),
        b64url(&serde_json::to_vec(&Value::Object(claims))?)
    );
    let mut sig = if opts.unsigned || alg == "none" {
        Vec::new()
    } else if opts.sign_with_other_key {
        state
            .pop_keys
            .get(kind, true)?
            .sign(&alg, input.as_bytes())?
    } else {
        key.sign(&alg, input.as_bytes())?
    };
    if opts.tamper_signature {
        match sig.get_mut(10) {
            Some(b) => *b ^= 0x01,
            None => sig.push(0),
        }
    }
    Ok(format!("{input}.{}", b64url(&sig)))
}

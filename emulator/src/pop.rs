//! Proof-of-possession signed HTTP requests (SHR) as Entra sends them with custom-extension
//! callouts: `Authorization: PoP <jws>` (protocol.md §4.4, shared/data/pop-construction.md).
//!
//! Header `{"typ":"pop","alg":"RS256","kid":<RFC 7638 thumbprint>}`; payload
//! `{"at","ts","m","u","p","nonce","cnf":{"jwk"}}` in that order; the inner access token `at` is
//! an ordinary callout token for `https://management.azure.com` whose `cnf` names the key
//! (`{"kid":<thumbprint>,"xms_ksl":"sw"}`, what Entra issues for MSAL's `req_cnf`). Every part can
//! be overridden or removed so tests can build each forgery of the security corpus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, anyhow, bail};
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
    /// RSA 2048 (what MSAL generates); signs RS256 (default) or PS256.
    #[default]
    Rsa2048,
    /// RSA 1024, to test weak-key refusal: a public key only (aws-lc-rs neither generates nor
    /// loads keys that weak, and a receiver must refuse it before checking any signature), so
    /// its "signatures" are random bytes of the right length.
    Rsa1024,
    /// EC P-256; signs ES256 (JWS fixed-width `r || s`).
    EcP256,
    /// RSA 4096, a larger key a receiver should accept (generated lazily: seconds in debug
    /// builds).
    Rsa4096,
}

impl PopKeyKind {
    /// The variant's first spelling, kept so callers written against it still compile.
    #[doc(hidden)]
    #[allow(non_upper_case_globals)]
    pub const Ecp256: Self = Self::EcP256;
}

enum Material {
    Rsa(KeyPair),
    /// A 1024-bit RSA public key only: aws-lc-rs neither makes nor loads keys that weak, and a
    /// receiver must refuse the key before it checks any signature.
    WeakRsaPublic,
    Ec(EcdsaKeyPair),
}

/// A PoP key pair with its public JWK and RFC 7638 thumbprint.
pub struct PopKey {
    kind: PopKeyKind,
    material: Material,
    /// The required public members in lexicographic order (RFC 7638 §3.2), base64url strings.
    canonical: Map<String, Value>,
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

fn rsa_canonical(n: &[u8], e: &[u8]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("e".into(), json!(b64url(e)));
    m.insert("kty".into(), json!("RSA"));
    m.insert("n".into(), json!(b64url(n)));
    m
}

/// RFC 7638 SHA-256 thumbprint (base64url) of an RSA or EC public JWK: the required members
/// only, lexicographic order, no whitespace. Other members (`alg`, `kid`, ...) are ignored.
pub fn jwk_thumbprint(jwk: &Value) -> anyhow::Result<String> {
    let members: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => &["e", "kty", "n"],
        Some("EC") => &["crv", "kty", "x", "y"],
        other => bail!("no RFC 7638 thumbprint for kty {other:?} (RSA or EC)"),
    };
    let mut canonical = Map::new();
    for name in members {
        let value = jwk
            .get(*name)
            .and_then(Value::as_str)
            .with_context(|| format!("JWK member {name} missing or not a string"))?;
        canonical.insert((*name).to_owned(), json!(value));
    }
    Ok(b64url(&Sha256::digest(
        Value::Object(canonical).to_string().as_bytes(),
    )))
}

impl PopKey {
    /// Generates a key (RSA keygen takes tens of milliseconds). `Rsa1024` returns the first
    /// fixed test key instead (see [`PopKeyKind::Rsa1024`]).
    pub fn generate(kind: PopKeyKind) -> anyhow::Result<Self> {
        let (material, canonical) = match kind {
            PopKeyKind::Rsa2048 | PopKeyKind::Rsa4096 => {
                let size = if kind == PopKeyKind::Rsa4096 {
                    KeySize::Rsa4096
                } else {
                    KeySize::Rsa2048
                };
                let pair =
                    KeyPair::generate(size).map_err(|_| anyhow!("RSA key generation failed"))?;
                let public = pair.public_key();
                let canonical = rsa_canonical(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                );
                (Material::Rsa(pair), canonical)
            }
            PopKeyKind::Rsa1024 => return Self::weak_rsa1024(),
            PopKeyKind::EcP256 => {
                let pair = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| anyhow!("EC key generation failed"))?;
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                let point = pair.public_key().as_ref();
                let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
                    bail!("unexpected EC public key encoding");
                };
                let mut canonical = Map::new();
                canonical.insert("crv".into(), json!("P-256"));
                canonical.insert("kty".into(), json!("EC"));
                canonical.insert("x".into(), json!(b64url(x)));
                canonical.insert("y".into(), json!(b64url(y)));
                (Material::Ec(pair), canonical)
            }
        };
        Self::assemble(kind, material, canonical)
    }

    /// A 1024-bit RSA public key (a random odd modulus with its top bit set).
    pub(crate) fn weak_rsa1024() -> anyhow::Result<Self> {
        let mut n = [0u8; 128];
        aws_lc_rs::rand::fill(&mut n).map_err(|_| anyhow!("random failed"))?;
        n[0] |= 0x80;
        n[127] |= 1;
        let canonical = rsa_canonical(&n, &[1, 0, 1]);
        Self::assemble(PopKeyKind::Rsa1024, Material::WeakRsaPublic, canonical)
    }

    fn assemble(
        kind: PopKeyKind,
        material: Material,
        canonical: Map<String, Value>,
    ) -> anyhow::Result<Self> {
        let thumbprint = jwk_thumbprint(&Value::Object(canonical.clone()))?;
        Ok(Self {
            kind,
            material,
            canonical,
            thumbprint,
        })
    }

    pub fn kind(&self) -> PopKeyKind {
        self.kind
    }

    /// RFC 7638 thumbprint (base64url): the header `kid`, `cnf.jwk.kid` and the AT's `cnf.kid`.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The default `alg` for this key: ES256 for EC, RS256 for RSA.
    pub fn default_alg(&self) -> &'static str {
        match self.kind {
            PopKeyKind::EcP256 => "ES256",
            PopKeyKind::Rsa2048 | PopKeyKind::Rsa1024 | PopKeyKind::Rsa4096 => "RS256",
        }
    }

    /// The public JWK as it goes in `cnf.jwk`: `kty`, the key members (`n`, `e` or `crv`, `x`,
    /// `y`), then `alg` and `kid` (= thumbprint), as MSAL and kubelogin add them.
    pub fn public_jwk(&self) -> Value {
        let members: &[&str] = match self.kind {
            PopKeyKind::EcP256 => &["kty", "crv", "x", "y"],
            PopKeyKind::Rsa2048 | PopKeyKind::Rsa1024 | PopKeyKind::Rsa4096 => &["kty", "n", "e"],
        };
        let mut m: Map<String, Value> = members
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), self.canonical.get(*name)?.clone())))
            .collect();
        m.insert("alg".into(), json!(self.default_alg()));
        m.insert("kid".into(), json!(self.thumbprint));
        Value::Object(m)
    }

    /// The canonical public JWK text (what the thumbprint hashes).
    pub fn canonical_jwk(&self) -> String {
        Value::Object(self.canonical.clone()).to_string()
    }

    /// Signs `message` as JWS `alg`: RS256 or PS256 with an RSA key, ES256 with the EC key.
    /// Any other alg, or one that does not fit the key, is an error.
    pub fn sign(&self, alg: &str, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let rsa: Option<&'static dyn RsaEncoding> = match alg {
            "RS256" => Some(&signature::RSA_PKCS1_SHA256),
            "PS256" => Some(&signature::RSA_PSS_SHA256),
            _ => None,
        };
        match (&self.material, rsa) {
            (Material::Rsa(pair), Some(encoding)) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(encoding, &SystemRandom::new(), message, &mut sig)
                    .map_err(|_| anyhow!("RSA signing failed"))?;
                Ok(sig)
            }
            // No private key: bytes of a signature's length, which cannot verify.
            (Material::WeakRsaPublic, Some(_)) => {
                let mut junk = vec![0u8; 128];
                aws_lc_rs::rand::fill(&mut junk).map_err(|_| anyhow!("random failed"))?;
                Ok(junk)
            }
            (Material::Ec(pair), None) if alg == "ES256" => Ok(pair
                .sign(&SystemRandom::new(), message)
                .map_err(|_| anyhow!("EC signing failed"))?
                .as_ref()
                .to_vec()),
            _ => bail!(
                "a {:?} PoP key cannot sign {alg:?} (RS256/PS256 for RSA, ES256 for EC)",
                self.kind
            ),
        }
    }

    /// Length of this key's real signatures.
    fn signature_len(&self) -> usize {
        match &self.material {
            Material::Rsa(pair) => pair.public_modulus_len(),
            Material::WeakRsaPublic => 128,
            Material::Ec(_) => 64,
        }
    }

    /// A compact JWS of these exact JSON texts (so tests can send duplicated members or odd
    /// bytes), signed with [`PopKey::sign`].
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

/// The signature `mint_pop` attaches when `alg` is one the key cannot make, so a forgery with
/// any header `alg` can still be built: HS256/384/512 are keyed with the canonical public JWK
/// text (the classic algorithm-confusion forgery); anything else gets random bytes of the
/// key's signature length (a receiver must refuse the alg before it looks at them).
fn forged_signature(key: &PopKey, alg: &str, message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let hmac = match alg {
        "HS256" => Some(aws_lc_rs::hmac::HMAC_SHA256),
        "HS384" => Some(aws_lc_rs::hmac::HMAC_SHA384),
        "HS512" => Some(aws_lc_rs::hmac::HMAC_SHA512),
        _ => None,
    };
    if let Some(algorithm) = hmac {
        let secret = aws_lc_rs::hmac::Key::new(algorithm, key.canonical_jwk().as_bytes());
        return Ok(aws_lc_rs::hmac::sign(&secret, message).as_ref().to_vec());
    }
    let mut junk = vec![0u8; key.signature_len()];
    aws_lc_rs::rand::fill(&mut junk).map_err(|_| anyhow!("random bytes failed"))?;
    Ok(junk)
}

/// Cached PoP keys of an emulator: the default key (made at start, so minting costs one
/// signature), and lazily one key per kind plus a second ("other") key per kind.
pub(crate) struct PopKeys {
    keys: Mutex<HashMap<(PopKeyKind, bool), Arc<PopKey>>>,
}

impl PopKeys {
    pub(crate) fn new(default_key: PopKey) -> Self {
        let mut keys = HashMap::new();
        keys.insert((default_key.kind(), false), Arc::new(default_key));
        Self {
            keys: Mutex::new(keys),
        }
    }

    /// The key of `kind` (`other`: a second, different key of that kind).
    pub(crate) fn get(&self, kind: PopKeyKind, other: bool) -> anyhow::Result<Arc<PopKey>> {
        // No panic can happen while the lock is held, so a poisoned lock is still consistent.
        let lock = || self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = lock().get(&(kind, other)) {
            return Ok(key.clone());
        }
        // Generated outside the lock; two racing callers both generate, one wins: harmless.
        let key = Arc::new(PopKey::generate(kind)?);
        Ok(lock().entry((kind, other)).or_insert(key).clone())
    }
}

/// Options of `POST /_emulator/tokens/pop` and [`crate::Emulator::mint_pop`]. Every field is
/// optional (absent = what Entra sends). For the `Option<Value>` overrides, a value replaces the
/// member in place and JSON `null` removes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PopOptions {
    /// How to mint the inner access token `at` (a callout token; its `audience` defaults to
    /// `https://management.azure.com` here, and its `extra_claims` merge after `cnf`, so
    /// `{"cnf": null}` there removes the binding).
    pub at: Option<MintOptions>,
    /// The inner token verbatim instead of a minted one (`at`, `at_cnf` are then unused).
    pub at_token: Option<String>,
    /// The inner token's `cnf` claim; default `{"kid": <key thumbprint>, "xms_ksl": "sw"}`
    /// (what Entra issues for MSAL's `req_cnf`); `null` removes it.
    pub at_cnf: Option<Value>,
    /// The PoP key (`rsa2048`, `rsa1024`, `ecp256`, `rsa4096`); default `rsa2048`. One key per kind and emulator, so every token of a kind
    /// carries the same `cnf.jwk`.
    pub key: Option<PopKeyKind>,
    /// Header `alg` and the signing algorithm; default `RS256` (`ES256` for `ecp256`). `none`
    /// gives an empty signature segment; an alg the key cannot make (`HS256`, `RS384`, `ES256`
    /// with an RSA key, ...) is still written to the header, with an HMAC keyed by the public
    /// key (HS256/384/512) or random bytes as the signature.
    pub alg: Option<String>,
    /// Header `typ`; default `"pop"`.
    pub typ: Option<Value>,
    /// Header `kid`; default the key's thumbprint.
    pub kid: Option<Value>,
    /// Merged into the header last (`null` removes a member, `alg` included).
    pub header_extra: Option<Map<String, Value>>,
    /// `ts` = now + this many seconds; default 0.
    pub ts_offset_secs: Option<i64>,
    /// `ts` verbatim (e.g. a string), winning over `ts_offset_secs`.
    pub ts: Option<Value>,
    /// `m`; default `"POST"`.
    pub m: Option<Value>,
    /// `u`; default the configured `pop_host` (`management.azure.com`).
    pub u: Option<Value>,
    /// `p`; default the configured `logic_app_resource` (the Logic App's ARM id).
    pub p: Option<Value>,
    /// `nonce`; default a fresh UUID as 32 hex digits.
    pub nonce: Option<Value>,
    /// `cnf`; default `{"jwk": <public JWK of the key>}`.
    pub cnf: Option<Value>,
    /// Merged into the payload last (`null` removes a member).
    pub claims_extra: Option<Map<String, Value>>,
    /// Sign with a second key of the same kind, not the one named in `cnf` and `kid`.
    pub sign_with_other_key: bool,
    /// Flip one bit of the signature.
    pub tamper_signature: bool,
    /// Empty signature segment, header `alg` unchanged.
    pub unsigned: bool,
}

/// `None` keeps the default, `Some(null)` removes, anything else replaces.
fn put(m: &mut Map<String, Value>, k: &str, over: &Option<Value>, default: Value) {
    match over {
        None => {
            m.insert(k.to_owned(), default);
        }
        Some(Value::Null) => {
            m.shift_remove(k);
        }
        Some(v) => {
            m.insert(k.to_owned(), v.clone());
        }
    }
}

fn merge(m: &mut Map<String, Value>, extra: &Option<Map<String, Value>>) {
    for (k, v) in extra.iter().flatten() {
        if v.is_null() {
            m.shift_remove(k);
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
    } else {
        let signer = if opts.sign_with_other_key {
            state.pop_keys.get(kind, true)?
        } else {
            key.clone()
        };
        match signer.sign(&alg, input.as_bytes()) {
            Ok(sig) => sig,
            Err(_) => forged_signature(&signer, &alg, input.as_bytes())?,
        }
    };
    if opts.tamper_signature {
        match sig.get_mut(10) {
            Some(b) => *b ^= 0x01,
            None => sig.push(0),
        }
    }
    Ok(format!("{input}.{}", b64url(&sig)))
}

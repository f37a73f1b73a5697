//! The public key a PoP-signed request carries in `cnf.jwk`: parsed into a type that can only
//! hold an acceptable asymmetric key, its RFC 7638 thumbprint, and signature verification.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::Digest as _;

use super::PopAlgorithm;

/// Why a `cnf.jwk` is not an acceptable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFault {
    /// `oct`: a shared secret can prove nothing about who signed.
    Symmetric,
    /// A key type or curve we do not accept (OKP, P-384, ...) or an RSA modulus over 8192 bits.
    Unsupported,
    /// Members missing, not base64url, or the wrong length.
    Malformed,
    /// RSA modulus under 2048 bits, or an exponent that is 1 or even.
    Weak,
    /// The JWK carries private members: whoever made it leaked its key.
    Private,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point `04 || x || y` on P-256.
    P256 {
        point: Vec<u8>,
    },
}

/// An asymmetric public key from a PoP token, with its thumbprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopKey {
    material: Material,
    thumbprint: String,
}

const RSA_PRIVATE: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth"];

fn b64(v: Option<&Value>) -> Result<(String, Vec<u8>), KeyFault> {
    let s = v.and_then(Value::as_str).ok_or(KeyFault::Malformed)?;
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| KeyFault::Malformed)?;
    Ok((s.to_owned(), bytes))
}

impl PopKey {
    pub fn from_jwk(jwk: &Map<String, Value>) -> Result<Self, KeyFault> {
        match jwk.get("kty").and_then(Value::as_str) {
            Some("RSA") => {
                if RSA_PRIVATE.iter().any(|k| jwk.contains_key(*k)) {
                    return Err(KeyFault::Private);
                }
                let (n_txt, n) = b64(jwk.get("n"))?;
                let (e_txt, e) = b64(jwk.get("e"))?;
                // Canonical form has no leading zero octets; anything else would give the same
                // key two thumbprints.
                if n.first().is_none_or(|b| *b == 0) || e.first().is_none_or(|b| *b == 0) {
                    return Err(KeyFault::Malformed);
                }
                let bits = n.len() * 8 - n[0].leading_zeros() as usize;
                if bits < 2048 {
                    return Err(KeyFault::Weak);
                }
                if bits > 8192 || e.len() > 4 {
                    return Err(KeyFault::Unsupported);
                }
                // e = 1 makes every "signature" its own message: anyone can forge. An even e is
                // no RSA key at all.
                let e_value = e.iter().fold(0u32, |v, b| (v << 8) | u32::from(*b));
                if e_value < 3 || e_value % 2 == 0 {
                    return Err(KeyFault::Weak);
                }
                let canonical = format!(r#"{{"e":"{e_txt}","kty":"RSA","n":"{n_txt}"}}"#);
                Ok(PopKey {
                    material: Material::Rsa { n, e },
                    thumbprint: thumbprint(&canonical),
                })
            }
            Some("EC") => {
                if jwk.contains_key("d") {
                    return Err(KeyFault::Private);
                }
                if jwk.get("crv").and_then(Value::as_str) != Some("P-256") {
                    return Err(KeyFault::Unsupported);
                }
                let (x_txt, x) = b64(jwk.get("x"))?;
                let (y_txt, y) = b64(jwk.get("y"))?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyFault::Malformed);
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let canonical =
                    format!(r#"{{"crv":"P-256","kty":"EC","x":"{x_txt}","y":"{y_txt}"}}"#);
                Ok(PopKey {
                    material: Material::P256 { point },
                    thumbprint: thumbprint(&canonical),
                })
            }
            Some("oct") => Err(KeyFault::Symmetric),
            Some(_) => Err(KeyFault::Unsupported),
            None => Err(KeyFault::Malformed),
        }
    }

    /// RFC 7638 thumbprint, base64url.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// Whether `alg` is meant for this kind of key.
    pub fn fits(&self, alg: PopAlgorithm) -> bool {
        matches!(
            (&self.material, alg),
            (
                Material::Rsa { .. },
                PopAlgorithm::Rs256 | PopAlgorithm::Ps256
            ) | (Material::P256 { .. }, PopAlgorithm::Es256)
        )
    }

    /// Verifies a JWS signature (`alg` must fit the key).
    pub fn verify(&self, alg: PopAlgorithm, message: &[u8], sig: &[u8]) -> bool {
        match (&self.material, alg) {
            (Material::Rsa { n, e }, PopAlgorithm::Rs256 | PopAlgorithm::Ps256) => {
                let params = if alg == PopAlgorithm::Rs256 {
                    &signature::RSA_PKCS1_2048_8192_SHA256
                } else {
                    &signature::RSA_PSS_2048_8192_SHA256
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            (Material::P256 { point }, PopAlgorithm::Es256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

fn thumbprint(canonical: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// RFC 7638 §3.1: the example RSA key and its thumbprint.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn rfc7638_example_thumbprint() {
        let k = PopKey::from_jwk(&obj(serde_json::json!({
            "kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"
        })))
        .map_err(|e| format!("{e:?}"));
        assert_eq!(
            k.map(|k| k.thumbprint().to_owned()),
            Ok("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".to_owned())
        );
    }

    #[test]
    fn unacceptable_keys_are_named() {
        let cases = [
            (
                serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}),
                KeyFault::Symmetric,
            ),
            (
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AA"}),
                KeyFault::Unsupported,
            ),
            (
                serde_json::json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}),
                KeyFault::Unsupported,
            ),
            (
                serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
                KeyFault::Weak,
            ),
            (
                serde_json::json!({"kty": "RSA", "n": RFC7638_N, "e": "AQ"}),
                KeyFault::Weak,
            ),
            (
                serde_json::json!({"kty": "RSA", "n": RFC7638_N, "e": "AQAA"}),
                KeyFault::Weak,
            ),
            (
                serde_json::json!({"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "d": "AQAB"}),
                KeyFault::Private,
            ),
            (
                serde_json::json!({"kty": "RSA", "n": 5, "e": "AQAB"}),
                KeyFault::Malformed,
            ),
            (
                serde_json::json!({"kty": "RSA", "n": "!!", "e": "AQAB"}),
                KeyFault::Malformed,
            ),
            (
                serde_json::json!({"n": RFC7638_N, "e": "AQAB"}),
                KeyFault::Malformed,
            ),
            (
                serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
                KeyFault::Malformed,
            ),
        ];
        for (jwk, fault) in cases {
            assert_eq!(PopKey::from_jwk(&obj(jwk.clone())), Err(fault), "{jwk}");
        }
    }
}

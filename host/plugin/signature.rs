//! Signed plugins: whoever can write to the plugin folder decides who gets work
//! and which solutions count, so an operator can require that every plugin was
//! signed by a key they trust (`[plugins] trusted_keys`).
//!
//! A signature is an Ed25519 signature (`ed25519-dalek`) over the plugin's
//! bytes and the bytes of its settings file beside it (`<key>.toml`), if any:
//! changing either invalidates it. It lives in `<plugin>.wasm.sig`, a text file
//! naming the public key that made it, so a refusal can say whether the key is
//! unknown or the content changed.
//!
//! Key and signature files are text: `ed25519:<base64>` for a public key (what
//! `trusted_keys` lists), `ed25519-secret:<base64>` for a secret key.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What a signature signs before the digests: a signature made for anything
/// else (another tool, another version of this format) never verifies here.
const DOMAIN: &[u8] = b"eligo plugin signature v1\n";
const PUBLIC_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "ed25519-secret:";

/// Why a plugin's signature was not accepted, as `/plugins` lists it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// No `.sig` file beside the plugin.
    #[error("not signed: {0} is missing (sign it with `eligo plugin sign`)")]
    NotSigned(String),
    /// Signed by a key that is not in `trusted_keys`.
    #[error("signed by an unknown key: {0} is not in [plugins] trusted_keys")]
    UnknownKey(String),
    /// Signed by a trusted key, over other bytes.
    #[error("signature does not match: the wasm or its settings changed since it was signed")]
    Mismatch,
    /// The `.sig` file cannot be read as a signature.
    #[error("the signature file {file} is unreadable: {why}")]
    Unreadable {
        /// The file.
        file: String,
        /// What is wrong with it.
        why: String,
    },
    /// A key (configured or given) is not a key.
    #[error("{0}")]
    BadKey(String),
}

/// The `.sig` file of a plugin file.
pub fn signature_path(wasm: &Path) -> PathBuf {
    let mut name = wasm.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// The settings file a signature covers: `<key>.toml` beside the plugin.
pub fn settings_path(wasm: &Path) -> PathBuf {
    wasm.with_extension("toml")
}

/// What is signed: the domain, then the digests of the plugin and of its
/// settings file (or a marker that there is none).
fn signed_message(wasm: &[u8], settings: Option<&[u8]>) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(&Sha256::digest(wasm));
    match settings {
        Some(settings) => {
            message.push(1);
            message.extend_from_slice(&Sha256::digest(settings));
        }
        None => message.push(0),
    }
    message
}

/// A public key as configured: `ed25519:<base64 of 32 bytes>`.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", BASE64.encode(key.as_bytes()))
}

/// Reads a public key (`ed25519:<base64>`).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, SignatureError> {
    let bad = |why: &str| SignatureError::BadKey(format!("{text:?} is not an eligo public key: {why}"));
    let encoded = text.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(|| bad("it does not start with `ed25519:`"))?;
    let bytes: [u8; 32] = BASE64
        .decode(encoded)
        .map_err(|e| bad(&e.to_string()))?
        .try_into()
        .map_err(|_| bad("an Ed25519 public key is 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| bad(&e.to_string()))
}

/// Reads a secret key file's text (`ed25519-secret:<base64>`; `#` lines are comments).
pub fn parse_secret_key(text: &str) -> Result<SigningKey, SignatureError> {
    let bad = |why: &str| SignatureError::BadKey(format!("not an eligo secret key: {why}"));
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| bad("the file is empty"))?;
    let encoded = line.strip_prefix(SECRET_PREFIX).ok_or_else(|| bad("it does not start with `ed25519-secret:`"))?;
    let seed: [u8; 32] = BASE64
        .decode(encoded)
        .map_err(|e| bad(&e.to_string()))?
        .try_into()
        .map_err(|_| bad("an Ed25519 secret key is 32 bytes"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A new key pair as the text of its two files: (secret, public).
pub fn generate_key_pair(name: &str) -> (String, String) {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let secret = format!(
        "# eligo plugin signing key {name:?}: SECRET, keep it off the servers\n{SECRET_PREFIX}{}\n",
        BASE64.encode(key.to_bytes())
    );
    let public = format!("{}\n", public_key_text(&key.verifying_key()));
    (secret, public)
}

/// The text of a `.sig` file: `key` signs `wasm` and its `settings` file's bytes.
pub fn sign(key: &SigningKey, wasm_name: &str, wasm: &[u8], settings: Option<(&str, &[u8])>) -> String {
    let signature = key.sign(&signed_message(wasm, settings.map(|(_, bytes)| bytes)));
    let covers = match settings {
        Some((name, _)) => format!("{wasm_name} and {name}"),
        None => format!("{wasm_name} (no settings file)"),
    };
    format!(
        "# eligo plugin signature over {covers}\nkey {}\nsignature {}\n",
        public_key_text(&key.verifying_key()),
        BASE64.encode(signature.to_bytes())
    )
}

/// The public key a `.sig` file's text names, as written there.
pub fn signer(sig: &str) -> Option<String> {
    sig.lines().map(str::trim).find_map(|l| l.strip_prefix("key ")).map(|k| k.trim().to_string())
}

/// The keys a plugin must be signed by; none means signatures are not required.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    /// The keys of `[plugins] trusted_keys`.
    pub fn parse(keys: &[String]) -> Result<Self, SignatureError> {
        keys.iter().map(|k| parse_public_key(k)).collect::<Result<_, _>>().map(TrustedKeys)
    }

    /// Whether a plugin needs a signature to load.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Identifies the set: a plugin refused or loaded under one set is looked at
    /// again under another.
    pub fn fingerprint(&self) -> String {
        let mut keys: Vec<String> = self.0.iter().map(public_key_text).collect();
        keys.sort();
        hex::encode(Sha256::digest(keys.join(",").as_bytes()))
    }

    /// Checks the signature file `sig` (its text, or `None` if missing) of the
    /// plugin `wasm` with its `settings` file's bytes. Always passes when no key is required.
    pub fn verify(
        &self,
        sig_file: &Path,
        sig: Option<&str>,
        wasm: &[u8],
        settings: Option<&[u8]>,
    ) -> Result<(), SignatureError> {
        if !self.required() {
            return Ok(());
        }
        let Some(sig) = sig else { return Err(SignatureError::NotSigned(sig_file.display().to_string())) };
        let unreadable = |why: String| SignatureError::Unreadable { file: sig_file.display().to_string(), why };
        let (mut key, mut signature) = (None, None);
        for line in sig.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            match line.split_once(' ') {
                Some(("key", value)) => key = Some(value.trim()),
                Some(("signature", value)) => signature = Some(value.trim()),
                _ => return Err(unreadable(format!("unexpected line {line:?}"))),
            }
        }
        let key = key.ok_or_else(|| unreadable("no `key` line".into()))?;
        let key = parse_public_key(key).map_err(|e| unreadable(e.to_string()))?;
        let signature = signature.ok_or_else(|| unreadable("no `signature` line".into()))?;
        let signature: [u8; 64] = BASE64
            .decode(signature)
            .map_err(|e| unreadable(format!("the signature is not base64: {e}")))?
            .try_into()
            .map_err(|_| unreadable("an Ed25519 signature is 64 bytes".into()))?;
        if !self.0.contains(&key) {
            return Err(SignatureError::UnknownKey(public_key_text(&key)));
        }
        key.verify(&signed_message(wasm, settings), &Signature::from_bytes(&signature))
            .map_err(|_| SignatureError::Mismatch)
    }

    /// [`verify`](Self::verify) with the files beside `wasm`: its `.sig` and its `.toml`.
    pub fn verify_files(&self, wasm_path: &Path, wasm: &[u8]) -> Result<(), SignatureError> {
        if !self.required() {
            return Ok(());
        }
        self.verify_beside(&Beside::read(wasm_path), wasm)
    }

    /// [`verify`](Self::verify) with the files read beside the plugin.
    pub fn verify_beside(&self, beside: &Beside, wasm: &[u8]) -> Result<(), SignatureError> {
        let unreadable = |file: &Path, e: &std::io::Error| SignatureError::Unreadable {
            file: file.display().to_string(),
            why: e.to_string(),
        };
        let sig = beside.sig.as_ref().map_err(|e| unreadable(&beside.sig_file, e))?;
        let sig = sig.as_ref().map(|bytes| String::from_utf8_lossy(bytes).into_owned());
        let settings = beside.settings.as_ref().map_err(|e| unreadable(&beside.settings_file, e))?;
        self.verify(&beside.sig_file, sig.as_deref(), wasm, settings.as_deref())
    }
}

/// The files beside a plugin that its signature involves, read once: for
/// telling whether they changed and for checking the signature.
pub struct Beside {
    sig_file: PathBuf,
    sig: std::io::Result<Option<Vec<u8>>>,
    settings_file: PathBuf,
    settings: std::io::Result<Option<Vec<u8>>>,
}

impl Beside {
    /// Reads the `.sig` and the `.toml` beside `wasm` (either may be missing).
    pub fn read(wasm: &Path) -> Self {
        let (sig_file, settings_file) = (signature_path(wasm), settings_path(wasm));
        Beside { sig: read_if_present(&sig_file), sig_file, settings: read_if_present(&settings_file), settings_file }
    }

    /// The bytes of the settings file as read (`None`: there is none). The
    /// plugin is configured from these, not from a second read, so that its
    /// settings are the very bytes its signature was checked over.
    pub fn settings(&self) -> Result<Option<&[u8]>, &std::io::Error> {
        self.settings.as_ref().map(Option::as_deref)
    }

    /// What was read, as digests: differs whenever either file does.
    pub fn fingerprint(&self) -> String {
        let digest = |read: &std::io::Result<Option<Vec<u8>>>| match read {
            Ok(Some(bytes)) => hex::encode(Sha256::digest(bytes)),
            Ok(None) => "none".to_string(),
            Err(e) => e.to_string(),
        };
        format!("{}:{}", digest(&self.sig), digest(&self.settings))
    }
}

/// A file's bytes, or `None` if there is no such file.
pub fn read_if_present(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (SigningKey, TrustedKeys) {
        let (secret, public) = generate_key_pair("test");
        let key = parse_secret_key(&secret).expect("secret");
        let trusted = TrustedKeys::parse(&[public.trim().to_string()]).expect("public");
        (key, trusted)
    }

    #[test]
    fn a_signature_covers_the_wasm_and_its_settings() {
        let (key, trusted) = keys();
        let file = Path::new("p.wasm.sig");
        let sig = sign(&key, "p.wasm", b"wasm", Some(("p.toml", b"a = 1")));
        assert_eq!(trusted.verify(file, Some(&sig), b"wasm", Some(b"a = 1")), Ok(()));
        assert_eq!(trusted.verify(file, Some(&sig), b"wasm!", Some(b"a = 1")), Err(SignatureError::Mismatch));
        assert_eq!(trusted.verify(file, Some(&sig), b"wasm", Some(b"a = 2")), Err(SignatureError::Mismatch));
        assert_eq!(trusted.verify(file, Some(&sig), b"wasm", None), Err(SignatureError::Mismatch), "settings removed");
        assert!(matches!(trusted.verify(file, None, b"wasm", None), Err(SignatureError::NotSigned(_))));
        let (other, _) = keys();
        let foreign = sign(&other, "p.wasm", b"wasm", None);
        let unknown = trusted.verify(file, Some(&foreign), b"wasm", None).expect_err("unknown key");
        assert_eq!(unknown, SignatureError::UnknownKey(public_key_text(&other.verifying_key())));
        assert!(unknown.to_string().starts_with("signed by an unknown key"));
        assert_eq!(TrustedKeys::default().verify(file, None, b"anything", None), Ok(()), "not required");
    }

    #[test]
    fn malformed_keys_and_signatures_are_named() {
        assert!(TrustedKeys::parse(&["ssh-ed25519 AAAA".into()]).is_err());
        assert!(TrustedKeys::parse(&["ed25519:AAAA".into()]).is_err());
        let (_, trusted) = keys();
        let error = trusted.verify(Path::new("x.sig"), Some("signature zzz"), b"w", None).expect_err("unreadable");
        assert!(matches!(error, SignatureError::Unreadable { .. }), "{error}");
    }
}

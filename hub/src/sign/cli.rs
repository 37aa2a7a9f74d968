//! `kmm-hub sign module|image|bench`: signing by hand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::SignError;
use super::auth::{AuthError, DockerConfigAuth};
use super::bench::{self, BenchError};
use super::image::{ImageSignError, RegistryTls, SignImageRequest, sign_image};
use super::keys::Signer;
use super::module::{HashAlgo, sign_module_file};

/// Sign kernel modules for Secure Boot, as the kernel's `sign-file` does, for single files or
/// whole kmod images.
#[derive(Args, Debug)]
pub struct SignArgs {
    #[command(subcommand)]
    pub command: SignCommand,
}

#[derive(Subcommand, Debug)]
pub enum SignCommand {
    /// Sign one module file (in place, or into OUT). An existing signature is replaced.
    Module(Box<ModuleArgs>),
    /// Pull an image, sign files in it and push the result as one new layer; prints the digest.
    Image(Box<ImageArgs>),
    /// Time this signer against the kernel's sign-file on the same modules; prints the ratio.
    Bench(Box<BenchArgs>),
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// Private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), PEM or DER, unencrypted.
    #[arg(long)]
    pub key: PathBuf,
    /// X.509 certificate of the key, PEM or DER.
    #[arg(long)]
    pub cert: PathBuf,
    /// Digest algorithm: sha256, sha384 or sha512.
    #[arg(long, default_value = "sha256", value_parser = parse_hash)]
    pub hash: HashAlgo,
}

fn parse_hash(s: &str) -> Result<HashAlgo, String> {
    s.parse().map_err(|e: SignError| e.to_string())
}

#[derive(Args, Debug)]
pub struct ModuleArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// The module to sign.
    pub input: PathBuf,
    /// Where to write the signed module (default: replace INPUT).
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// The unsigned image.
    #[arg(long)]
    pub from: String,
    /// Where to push the signed image (may equal --from).
    #[arg(long)]
    pub to: String,
    /// Absolute path of a file to sign inside the image (repeat for more).
    #[arg(long = "file", required = true)]
    pub files: Vec<String>,
    /// Registry credentials: a docker config.json / .dockerconfigjson.
    #[arg(long)]
    pub auth: Option<PathBuf>,
    /// Accept any certificate, and fall back to plain HTTP when the registry does not speak
    /// HTTPS (registryTLS.insecure).
    #[arg(long)]
    pub insecure: bool,
    /// Use HTTPS without verifying the registry's certificate (registryTLS.insecureSkipTLSVerify).
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
    /// Seconds to wait for the registry to connect or answer.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Kernel version for `${KERNEL_FULL_VERSION}` and friends in --from, --to and --file.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Value of `${MOD_NAME}`.
    #[arg(long, default_value = "")]
    pub module_name: String,
    /// Value of `${MOD_NAMESPACE}`.
    #[arg(long, default_value = "")]
    pub module_namespace: String,
}

impl ImageArgs {
    /// Substitutes the KMM variables in --from, --to and --file.
    fn substituted(&self) -> Result<(String, String, Vec<String>), CliError> {
        let Some(kernel) = &self.kernel else {
            let all = std::iter::once(&self.from)
                .chain(std::iter::once(&self.to))
                .chain(&self.files);
            if let Some(v) = all.into_iter().find(|v| v.contains('$')) {
                return Err(CliError::Variables {
                    value: v.clone(),
                    reason: "uses variables; give --kernel (and --module-name/--module-namespace)".into(),
                });
            }
            return Ok((self.from.clone(), self.to.clone(), self.files.clone()));
        };
        use shared_api::vars::{Template, Variables};
        let vars =
            Variables::new(kernel, &self.module_name, &self.module_namespace).map_err(|e| CliError::Variables {
                value: kernel.clone(),
                reason: e.to_string(),
            })?;
        // Every variable is given (this command has --module-name); unlike in a Module, where an
        // unknown one is only warned about, a typo here is an error: nobody reads warnings of a
        // one-off command.
        let sub = |v: &String| {
            let reason = match shared_api::vars::unknown_references(Template::Image, v) {
                Ok(unknown) if unknown.is_empty() => {
                    return vars.substitute(Template::Image, v).map_err(|e| e.to_string());
                }
                Ok(unknown) => format!("unknown variable(s) {}", unknown.join(", ")),
                Err(e) => e.to_string(),
            };
            Err(reason)
        };
        let sub = |v: &String| {
            sub(v).map_err(|reason| CliError::Variables {
                value: v.clone(),
                reason,
            })
        };
        Ok((
            sub(&self.from)?,
            sub(&self.to)?,
            self.files.iter().map(sub).collect::<Result<_, _>>()?,
        ))
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The kernel's sign-file.
    #[arg(long, default_value = bench::DEFAULT_SIGN_FILE)]
    pub sign_file: PathBuf,
    /// Modules to sign: files, or directories searched for *.ko (e.g. the output of
    /// ci/kmods/build.sh).
    #[arg(required = true)]
    pub modules: Vec<PathBuf>,
    /// Also sign a generated module-like ELF file of this many MiB (0: none).
    #[arg(long, default_value_t = 64)]
    pub large_mib: usize,
    /// Timed rounds per module (after one warm-up round).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// RSA key size of the generated key (when --key/--cert are not given).
    #[arg(long, default_value_t = 4096)]
    pub rsa_bits: u32,
    /// Private key (PEM, as sign-file needs); default: a generated RSA key.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Certificate for --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    #[arg(long, default_value = "sha256", value_parser = parse_hash)]
    pub hash: HashAlgo,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Image(#[from] ImageSignError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{value:?}: {reason}")]
    Variables { value: String, reason: String },
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runs a `kmm-hub sign` command, printing its result on stdout.
pub fn run(args: SignArgs) -> Result<(), CliError> {
    match args.command {
        SignCommand::Module(a) => {
            let signer = Signer::from_files(&a.keys.key, &a.keys.cert)?;
            let r = sign_module_file(&a.input, a.output.as_deref(), &signer, a.keys.hash)?;
            println!(
                "signed {} with {} {} ({} bytes{})",
                r.output.display(),
                signer.key_description(),
                a.keys.hash,
                r.bytes,
                if r.replaced {
                    ", replaced the previous signature"
                } else {
                    ""
                }
            );
            Ok(())
        }
        SignCommand::Image(a) => {
            let (from, to, files) = a.substituted()?;
            let signer = Signer::from_files(&a.keys.key, &a.keys.cert)?;
            let auth = match &a.auth {
                Some(p) => {
                    let json = zeroize::Zeroizing::new(std::fs::read(p).map_err(io_err(p))?);
                    DockerConfigAuth::parse(&json, &p.display().to_string())?
                }
                None => DockerConfigAuth::default(),
            };
            let req = SignImageRequest {
                from: &from,
                to: &to,
                files: &files,
                signer: &signer,
                hash: a.keys.hash,
                auth: &auth,
                tls: RegistryTls {
                    insecure: a.insecure,
                    insecure_skip_tls_verify: a.insecure_skip_tls_verify,
                },
                timeout: Duration::from_secs(a.timeout.max(1)),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .worker_threads(2)
                .build()
                .map_err(|e| CliError::Io {
                    path: "tokio runtime".into(),
                    source: e,
                })?;
            let out = rt.block_on(sign_image(&req))?;
            for f in &out.files {
                eprintln!(
                    "signed {}{}",
                    f.path,
                    if f.replaced {
                        " (replaced the previous signature)"
                    } else {
                        ""
                    }
                );
            }
            eprintln!("pushed {}", out.pinned);
            println!("{}", out.digest);
            Ok(())
        }
        SignCommand::Bench(a) => {
            let tmp = tempfile::tempdir().map_err(io_err(std::path::Path::new("temp dir")))?;
            let mut modules = Vec::new();
            for m in &a.modules {
                collect_modules(m, &mut modules)?;
            }
            if a.large_mib > 0 {
                let large = tmp.path().join(format!("large-{}MiB.ko", a.large_mib));
                bench::write_large_module(&large, a.large_mib << 20).map_err(io_err(&large))?;
                modules.push(large);
            }
            let (key, cert) = match (&a.key, &a.cert) {
                (Some(k), Some(c)) => (k.clone(), c.clone()),
                _ => bench::generate_rsa_key(tmp.path(), a.rsa_bits)?,
            };
            let signer = Signer::from_files(&key, &cert)?;
            let rows = bench::run_bench(&bench::BenchConfig {
                sign_file: &a.sign_file,
                key: &key,
                cert: &cert,
                hash: a.hash,
                modules: &modules,
                rounds: a.rounds.max(1),
                work_dir: tmp.path(),
            })?;
            print!(
                "{}",
                bench::format_report(&rows, a.rounds.max(1), a.hash, &signer.key_description())
            );
            Ok(())
        }
    }
}

fn collect_modules(p: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let meta = std::fs::metadata(p).map_err(io_err(p))?;
    if meta.is_file() {
        out.push(p.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(p)
        .map_err(io_err(p))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            collect_modules(&e, out)?;
        } else if e.extension().is_some_and(|x| x == "ko") {
            out.push(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        c: SignCommand,
    }

    fn image(args: &[&str]) -> ImageArgs {
        let mut all = vec!["t", "image", "--key", "k", "--cert", "c"];
        all.extend_from_slice(args);
        match T::parse_from(all).c {
            SignCommand::Image(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn image_variables() {
        let a = image(&[
            "--from",
            "r/x:${KERNEL_FULL_VERSION}-unsigned",
            "--to",
            "r/x:${KERNEL_FULL_VERSION}",
            "--file",
            "/opt/lib/modules/${KERNEL_FULL_VERSION}/${MOD_NAME}.ko",
            "--kernel",
            "6.1.0-56-amd64+",
            "--module-name",
            "kmm_ci_a",
        ]);
        let (from, to, files) = a.substituted().unwrap();
        // `+` becomes `_`, as upstream normalises kernels for templates.
        assert_eq!(from, "r/x:6.1.0-56-amd64_-unsigned");
        assert_eq!(to, "r/x:6.1.0-56-amd64_");
        assert_eq!(files, ["/opt/lib/modules/6.1.0-56-amd64_/kmm_ci_a.ko"]);

        let a = image(&["--from", "r/x:1", "--to", "r/x:2", "--file", "/m/${KERNEL_X}.ko"]);
        let e = a.substituted().unwrap_err().to_string();
        assert!(e.contains("--kernel"), "{e}");
        let a = image(&[
            "--from",
            "r/x:1",
            "--to",
            "r/x:2",
            "--file",
            "/m/${NOPE}.ko",
            "--kernel",
            "6.1.0",
        ]);
        let e = a.substituted().unwrap_err().to_string();
        assert!(e.contains("NOPE"), "{e}");
    }
}

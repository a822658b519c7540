//! `meshentry ca`: a small mesh certificate authority for ISTIO_MUTUAL, so a mesh without istiod
//! can still give workloads SPIFFE identities (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
//!
//! The files are named as Istio names them (`ca-cert.pem`, `ca-key.pem` for the CA;
//! `cert-chain.pem`, `key.pem`, `root-cert.pem` for a workload), so they can be moved to or from
//! an Istio installation's plug-in CA and workload certificate directories.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Create a new CA in DIR (ca-cert.pem, ca-key.pem, trust-domain).
    Init {
        /// The directory to create the CA in (made if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The SPIFFE trust domain of the identities this CA issues. Default: the
        /// --mesh-config's trustDomain, else cluster.local.
        #[arg(long)]
        trust_domain: Option<String>,
        #[command(flatten)]
        mesh: crate::cmd::mesh::MeshArgs,
        /// Validity of the CA certificate, in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
        /// Replace an existing CA in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload identity: cert-chain.pem, key.pem and root-cert.pem in OUT.
    Issue {
        /// The CA's directory (from `ca init`).
        #[arg(long)]
        dir: PathBuf,
        /// The workload's namespace: the `ns/NAMESPACE` of its SPIFFE identity.
        #[arg(short, long)]
        namespace: String,
        /// The workload's service account: the `sa/SERVICE_ACCOUNT` of its SPIFFE identity.
        #[arg(long)]
        service_account: String,
        /// Extra DNS names for the certificate (repeatable), for servers reached by name.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 90)]
        days: u64,
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
    },
}

const DAY: Duration = Duration::from_secs(86_400);

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    match &args.action {
        Action::Init {
            dir,
            trust_domain,
            mesh,
            days,
            force,
        } => {
            let trust_domain = match trust_domain {
                Some(t) => t.clone(),
                None => match crate::cmd::mesh::read(mesh)? {
                    Some(m) => m.trust_domain,
                    None => return Ok(ExitCode::from(1)),
                },
            };
            init(dir, &trust_domain, *days, *force)
        }
        Action::Issue {
            dir,
            namespace,
            service_account,
            dns,
            days,
            out,
        } => issue(dir, namespace, service_account, dns, *days, out),
    }
}

fn init(dir: &Path, trust_domain: &str, days: u64, force: bool) -> anyhow::Result<ExitCode> {
    check_label("trust domain", trust_domain, true)?;
    let cert_path = dir.join("ca-cert.pem");
    if cert_path.exists() && !force {
        bail!("{} exists; pass --force to replace the CA", cert_path.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, format!("meshentry mesh CA for {trust_domain}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - DAY).into();
    params.not_after = (now + DAY * u32::try_from(days).unwrap_or(u32::MAX)).into();
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params.self_signed(&key).context("cannot sign the CA certificate")?;
    write_private(&dir.join("ca-key.pem"), &key.serialize_pem())?;
    write(&cert_path, &cert.pem())?;
    write(&dir.join("trust-domain"), &format!("{trust_domain}\n"))?;
    println!("CA for trust domain {trust_domain} written to {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn issue(
    dir: &Path,
    namespace: &str,
    service_account: &str,
    dns: &[String],
    days: u64,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    check_label("namespace", namespace, false)?;
    check_label("service account", service_account, false)?;
    let ca_pem = read(&dir.join("ca-cert.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca-key.pem"))?)
        .with_context(|| format!("{}: not a usable private key", dir.join("ca-key.pem").display()))?;
    let trust_domain = read(&dir.join("trust-domain"))?.trim().to_string();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("{}: not a CA certificate", dir.join("ca-cert.pem").display()))?;
    let spiffe = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names.push(SanType::URI(
        spiffe.clone().try_into().context("the SPIFFE id is not ASCII")?,
    ));
    for name in dns {
        let ia5 = name
            .clone()
            .try_into()
            .with_context(|| format!("--dns {name:?} is not ASCII"))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    // Workload certificates serve and connect: both key usages, as Istio's have.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(300)).into();
    params.not_after = (now + DAY * u32::try_from(days).unwrap_or(u32::MAX)).into();
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the workload certificate")?;

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_private(&out.join("key.pem"), &key.serialize_pem())?;
    write(&out.join("cert-chain.pem"), &cert.pem())?;
    write(&out.join("root-cert.pem"), &ca_pem)?;
    println!("{spiffe} written to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Namespaces and service accounts are DNS labels (RFC 1123); a trust domain is a DNS name.
fn check_label(what: &str, value: &str, dots: bool) -> anyhow::Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.'))
        && !value.starts_with(['-', '.'])
        && !value.ends_with(['-', '.']);
    if !ok {
        bail!(
            "{what} {value:?} must be lower-case letters, digits and '-'{}",
            if dots { " and '.'" } else { "" }
        );
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

//! Certificates for the TLS suites, made with the openssl CLI: a CA, and server certificates it
//! issues for the names `db`, `db-headless` (never the pods' addresses: Baton and the members
//! verify the chain, as libpq's `verify-ca` does).

/// A CA and a server certificate for the names `db`, `db-headless` (not the pods' addresses:
/// Baton verifies the chain, as libpq's `verify-ca` does), made with the openssl CLI, as
/// `(ca.crt, tls.crt, tls.key)`, in `dir`.
pub fn certificates(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| openssl(dir, args);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:db,DNS:db-headless\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=baton-test-ca",
    ]);
    let (crt, key) = issue(dir);
    let ca = std::fs::read_to_string(dir.join("ca.crt")).expect("read");
    (ca, crt, key)
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new server key and certificate from the CA in `dir` (what a renewal writes).
pub fn issue(dir: &std::path::Path) -> (String, String) {
    let run = |args: &[&str]| openssl(dir, args);
    run(&[
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj",
        "/CN=db",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read");
    (read("tls.crt"), read("tls.key"))
}

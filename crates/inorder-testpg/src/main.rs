//! `inorder-testpg --owner-pid PID`: starts a throw-away PostgreSQL cluster that lives as long
//! as process PID, prints its URL and exits. The README's test command uses it to share one
//! cluster across every test process of a run (`TESTPG_URL`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let owner = match (args.next().as_deref(), args.next().map(|p| p.parse::<u32>())) {
        (Some("--owner-pid"), Some(Ok(pid))) => pid,
        _ => {
            eprintln!("usage: inorder-testpg --owner-pid PID");
            return ExitCode::from(2);
        }
    };
    match inorder_testpg::Cluster::start_owned_by(owner) {
        Ok(cluster) => {
            println!("{}", cluster.url("postgres"));
            // The watchdog stops and removes the cluster when the owner exits.
            cluster.detach();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inorder-testpg: {e}");
            ExitCode::FAILURE
        }
    }
}

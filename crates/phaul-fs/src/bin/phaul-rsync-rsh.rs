//! rsync's remote shell for phaul's rsync driver: joins rsync's stdin and
//! stdout to the source driver's socket (named by `PHAUL_RSYNC_SOCKET`),
//! which carries them over the authenticated phaul link. See
//! `phaul_fs::rsync`.

fn main() -> std::process::ExitCode {
    phaul_fs::rsync::rsh_main()
}

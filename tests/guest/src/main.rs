//! `pageless-guest`: in-VM checks and benchmark for the pagelessfs kernel module.
//!
//! Every subcommand prints `CHECK <name> ok|FAIL <detail>` per check and
//! `RESULT <key>=<value>` per measurement; lines starting with `#` are commentary. The exit
//! status is 0 when every check passed. `tests/guest/kmod-checks.sh` runs the whole sequence.

mod apparmor;
mod bench;
mod blk;
mod checks;
mod extents;
mod isolation;
mod numa;
mod persist;
mod scrub_bench;
mod selinux;
mod struct_page;
mod util;
mod vfio;
mod vfio_bench;
mod vfio_reuse;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pageless-guest", about = "In-VM checks for pagelessfs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Map FILE, touch every page and check that each is on host NUMA node NODE.
    NumaPages {
        file: PathBuf,
        #[arg(long)]
        node: i32,
        #[arg(long)]
        name: String,
    },
    /// In a thread changed to AppArmor PROFILE (as unconfined root may): HELLO on each
    /// --control socket, vhost-user GET_FEATURES on each --vhost socket, open each --open file
    /// read-write: each must work, or each be refused (EACCES, or by the owner), as --expect
    /// says.
    AaProbe {
        #[arg(long)]
        profile: String,
        #[arg(long, value_enum)]
        expect: apparmor::Expect,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        targets: apparmor::Targets,
    },
    /// One access of --control (HELLO), --vhost (GET_FEATURES), --open (read-write) or
    /// --inherited (map the file on this inherited fd read-write) by this process as it runs
    /// (e.g. exec'd into another VM's SELinux domain): exit code 0 allowed, 13 denied by the
    /// kernel (EACCES, or SELinux took the inherited file away), 3 refused by the owner, 1
    /// anything else.
    Probe {
        #[command(flatten)]
        targets: apparmor::Targets,
        #[arg(long)]
        inherited: Option<i32>,
    },
    /// What libvirtd does for QEMU, with a file handed over: open FILE read-write as fd --fd,
    /// set the SELinux exec context to LABEL and exec PROGRAM ARGS…, which inherits the file
    /// (SELinux revalidates it at the domain transition).
    ExecInto {
        #[arg(long)]
        label: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        fd: i32,
        program: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Save struct page counters (/proc/vmstat nr_memmap*, MemTotal) to FILE.
    MemmapSave { file: PathBuf },
    /// Compare struct page counters with those saved in FILE.
    MemmapCheck { file: PathBuf, name: String },
    /// Check that RANGES (SIZE@START,...) are write-back in the PAT memtype list.
    Pat {
        ranges: String,
        #[arg(long, default_value = "pat-write-back")]
        name: String,
    },
    /// Create FILE of SIZE, map it and count the minor faults of touching every page.
    Faults {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, value_parser = util::parse_size)]
        size: u64,
        #[arg(long, default_value_t = 0)]
        min: i64,
        #[arg(long)]
        max: i64,
        #[arg(long)]
        name: String,
        /// Keep the file afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Mappings at 4K-aligned but not huge-aligned offsets/lengths.
    OddMaps { dir: PathBuf },
    /// Two processes share a file, the fd passed over SCM_RIGHTS; smaps shows pf.
    Share { dir: PathBuf },
    /// Unlinked files are scrubbed before their memory is reused.
    ScrubUnlink { dir: PathBuf },
    /// A shrunk tail is scrubbed before it is reused.
    ScrubTruncate { dir: PathBuf },
    /// ENOSPC, EINVAL, MAP_PRIVATE, SIGBUS and EFBIG past EOF, statfs magic.
    Errors { dir: PathBuf },
    /// Seals: a sealed file cannot be shrunk or grown through any fd.
    Seals { dir: PathBuf },
    /// fork() does not pass pagelessfs mappings to the child.
    ForkDontcopy { dir: PathBuf },
    /// Memory of an unlinked file stays quarantined while a process that mapped it lives.
    QuarantineUnlink { dir: PathBuf },
    /// Create FILE, map, unmap, close and unlink it, print HOLDER-READY and sleep until
    /// killed (its memory stays quarantined meanwhile).
    QuarantineHolder { file: PathBuf },
    /// The DMA attack: VFIO-map a file, give the memory back with the container open, let
    /// another file take the pool; the device must never read the other file's data.
    VfioReuse {
        /// PCI address of the edu device (1234:11e8), bound to vfio-pci.
        #[arg(long)]
        bdf: String,
        /// A pagelessfs mount (the whole pool is used).
        #[arg(long)]
        dir: PathBuf,
        /// How the first process gives the memory back.
        #[arg(long, value_enum)]
        give_back: vfio_reuse::GiveBack,
    },
    /// Print FIEMAP extents (like filefrag -v) and check them.
    Fiemap { files: Vec<PathBuf> },
    /// Check NAME: every FIEMAP extent of FILES lies in one of RANGES (SIZE@START,...).
    ExtentsWithin { name: String, ranges: String, files: Vec<PathBuf> },
    /// kexec_file_load KERNEL and INITRD with CMDLINE, then reboot into them at once.
    Kexec { kernel: PathBuf, initrd: PathBuf, cmdline: String },
    /// Print `SNAP TAG` lines of every file under MOUNTS (mode, owner, size, content hash,
    /// physical extents) and the pool's use; check TAG-free-exact.
    PersistSnapshot {
        tag: String,
        mounts: Vec<PathBuf>,
        /// Also check TAG-quarantine-empty.
        #[arg(long)]
        no_quarantine: bool,
    },
    /// Damage the module's metadata area of RANGES through /dev/mem (module unloaded).
    MetaScribble {
        ranges: String,
        #[arg(value_enum)]
        what: persist::Scribble,
    },
    /// Allocate and map the whole pool via DIR, compare struct page counters with BASE.
    HoldPool { dir: PathBuf, base: PathBuf },
    /// delete_module(MODULE) must fail while a pagelessfs is mounted.
    RmmodBusy {
        #[arg(default_value = "pageless")]
        module: String,
    },
    /// Faulting processes race truncate/unlink for SECS seconds.
    Stress {
        #[arg(long, default_value_t = 15)]
        secs: u64,
        #[arg(long, default_value_t = 3)]
        workers: usize,
        dirs: Vec<PathBuf>,
    },
    /// Inject an uncorrected memory error (mce-inject debugfs dir) into a file of DIR.
    MemoryError {
        dir: PathBuf,
        #[arg(long, default_value = "/sys/kernel/debug/mce-inject")]
        inject: PathBuf,
    },
    /// Inject an uncorrected memory error at physical address PHYS (mce-inject debugfs dir).
    InjectError {
        #[arg(value_parser = util::parse_size)]
        phys: u64,
        #[arg(long, default_value = "/sys/kernel/debug/mce-inject")]
        inject: PathBuf,
    },
    /// memory_failure() of a page of a mapped file of DIR (hard_offline_page): SIGBUS to its
    /// mappers and retirement on 6.19+, ignored before.
    MemoryFailure { dir: PathBuf },
    /// Benchmark: faults and time to first-touch SIZE, and struct page bytes per GiB.
    BenchFaults {
        /// pagelessfs mounts (1G, 2M, 4K ...).
        #[arg(long = "pageless")]
        pageless: Vec<PathBuf>,
        /// hugetlbfs mounts.
        #[arg(long = "hugetlbfs")]
        hugetlbfs: Vec<PathBuf>,
        #[arg(long, default_value = "1G", value_parser = util::parse_size)]
        size: u64,
    },
    /// Benchmark: the module's scrubber against memset of SIZE on the same core (CPU 0).
    BenchScrub {
        /// A pagelessfs mount.
        dir: PathBuf,
        #[arg(long, default_value = "1G", value_parser = util::parse_size)]
        size: u64,
    },
    /// Benchmark: O_DIRECT sequential write/read of MIB MiB and 4K random reads on DEVICE.
    BlkBench {
        device: PathBuf,
        #[arg(long, default_value_t = 256)]
        mib: u64,
        #[arg(long, default_value_t = 2000)]
        random_reads: usize,
    },
    /// VFIO type1 + QEMU's edu device: DMA round trip into a pagelessfs file (or a memfd).
    #[command(group(clap::ArgGroup::new("buffer").required(true).args(["file", "memfd"])))]
    VfioEdu {
        /// PCI address of the edu device (1234:11e8), bound to vfio-pci.
        #[arg(long)]
        bdf: String,
        /// The DMA buffer: this file (pagelessfs), sized to 2 MiB or the mount's page size.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The DMA buffer: a memfd (the control case).
        #[arg(long)]
        memfd: bool,
        /// CHECK name prefix (default vfio-file / vfio-memfd).
        #[arg(long)]
        name: Option<String>,
        /// IOVA of the buffer; the DMA addresses must stay below 2^28 (edu's DMA mask).
        #[arg(long, default_value = "0x1000000", value_parser = util::parse_size)]
        iova: u64,
        /// Keep the file afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Benchmark: VFIO_IOMMU_MAP_DMA/UNMAP_DMA of SIZE on pagelessfs vs hugetlbfs mounts.
    VfioMapBench {
        /// PCI address of a device bound to vfio-pci (its group makes the container usable).
        #[arg(long)]
        bdf: String,
        /// pagelessfs mounts.
        #[arg(long = "pageless", num_args = 1..)]
        pageless: Vec<PathBuf>,
        /// hugetlbfs mounts.
        #[arg(long = "hugetlbfs", num_args = 1..)]
        hugetlbfs: Vec<PathBuf>,
        /// Also a memfd (4 KiB struct pages, pinned).
        #[arg(long)]
        memfd: bool,
        #[arg(long, default_value = "1G", value_parser = util::parse_size)]
        size: u64,
        /// Map/unmap runs per mount (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Benchmark: struct page bytes per GiB: System RAM, pagelessfs, hugetlb (HVO off/on),
    /// device-dax over a legacy pmem namespace (ndctl, map=mem and map=dev).
    StructPage {
        /// System RAM's boot memmap per GiB.
        #[arg(long)]
        ram: bool,
        /// The pool ranges (SIZE@START,...): with --ram, no memory block may overlap them;
        /// with --pageless, the pool capacity is compared with them.
        #[arg(long)]
        ranges: Option<String>,
        /// A pagelessfs mount: allocate, map and touch --size there.
        #[arg(long)]
        pageless: Option<PathBuf>,
        /// Reserve 1 GiB of 2M and of 1G hugetlb pages, HVO on (held in files under
        /// --hold-dir until power-off) and off (left free).
        #[arg(long)]
        hugetlb: bool,
        #[arg(long, default_value = "/run/pageless-hugetlb")]
        hold_dir: PathBuf,
        /// A pmem namespace (e.g. namespace0.0) to turn into device-dax with ndctl.
        #[arg(long)]
        devdax: Option<String>,
        #[arg(long, default_value = "ndctl")]
        ndctl: PathBuf,
        #[arg(long, default_value = "1G", value_parser = util::parse_size)]
        size: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let mut r = util::Report::default();
    let res = match cli.cmd {
        Cmd::NumaPages { file, node, name } => numa::numa_pages(&mut r, &file, node, &name),
        Cmd::AaProbe { profile, expect, name, targets } => {
            apparmor::aa_probe(&mut r, &name, &profile, expect, targets)
        }
        Cmd::Probe { targets, inherited } => std::process::exit(apparmor::probe(targets, inherited)),
        Cmd::ExecInto { label, file, fd, program, args } => {
            let e = selinux::exec_into(&label, &file, fd, &program, &args);
            eprintln!("exec-into {label}: {e}");
            std::process::exit(1)
        }
        Cmd::MemmapSave { file } => checks::memmap_save(&mut r, &file),
        Cmd::MemmapCheck { file, name } => checks::memmap_check(&mut r, &file, &name),
        Cmd::Pat { ranges, name } => checks::pat(&mut r, &ranges, &name),
        Cmd::Faults { file, size, min, max, name, keep } => {
            checks::faults(&mut r, &file, size, min, max, &name, keep)
        }
        Cmd::OddMaps { dir } => checks::odd_maps(&mut r, &dir),
        Cmd::Share { dir } => checks::share(&mut r, &dir),
        Cmd::ScrubUnlink { dir } => checks::scrub_unlink(&mut r, &dir),
        Cmd::ScrubTruncate { dir } => checks::scrub_truncate(&mut r, &dir),
        Cmd::Errors { dir } => checks::errors(&mut r, &dir),
        Cmd::Seals { dir } => isolation::seals(&mut r, &dir),
        Cmd::ForkDontcopy { dir } => isolation::fork_dontcopy(&mut r, &dir),
        Cmd::QuarantineUnlink { dir } => isolation::quarantine_unlink(&mut r, &dir),
        Cmd::QuarantineHolder { file } => isolation::quarantine_holder(&file),
        Cmd::VfioReuse { bdf, dir, give_back } => vfio_reuse::vfio_reuse(&mut r, &bdf, &dir, give_back),
        Cmd::Fiemap { files } => checks::fiemap_cmd(&mut r, &files),
        Cmd::ExtentsWithin { name, ranges, files } => extents::extents_within(&mut r, &name, &ranges, &files),
        Cmd::Kexec { kernel, initrd, cmdline } => persist::kexec(&kernel, &initrd, &cmdline),
        Cmd::PersistSnapshot { tag, mounts, no_quarantine } => {
            persist::snapshot(&mut r, &tag, &mounts, no_quarantine)
        }
        Cmd::MetaScribble { ranges, what } => persist::meta_scribble(&mut r, &ranges, what),
        Cmd::HoldPool { dir, base } => checks::hold_pool(&mut r, &dir, &base),
        Cmd::RmmodBusy { module } => checks::rmmod_busy(&mut r, &module),
        Cmd::Stress { secs, workers, dirs } => checks::stress(&mut r, &dirs, secs, workers),
        Cmd::MemoryError { dir, inject } => checks::memory_error(&mut r, &dir, &inject),
        Cmd::MemoryFailure { dir } => checks::memory_failure(&mut r, &dir),
        Cmd::InjectError { phys, inject } => checks::inject_uncorrected(&inject, phys).map(|_| ()),
        Cmd::BenchFaults { pageless, hugetlbfs, size } => {
            bench::bench_faults(&mut r, &pageless, &hugetlbfs, size)
        }
        Cmd::BenchScrub { dir, size } => scrub_bench::bench_scrub(&mut r, &dir, size),
        Cmd::BlkBench { device, mib, random_reads } => blk::blk_bench(&mut r, &device, mib, random_reads),
        Cmd::VfioEdu { bdf, file, memfd: _, name, iova, keep } => {
            let source = file.map_or(vfio::Source::Memfd, vfio::Source::File);
            vfio::vfio_edu(&mut r, &vfio::EduArgs { bdf: &bdf, source, name, iova, keep })
        }
        Cmd::VfioMapBench { bdf, pageless, hugetlbfs, memfd, size, runs } => vfio_bench::vfio_map_bench(
            &mut r,
            &vfio_bench::BenchArgs {
                bdf: &bdf,
                pageless: &pageless,
                hugetlbfs: &hugetlbfs,
                memfd,
                size,
                runs,
            },
        ),
        Cmd::StructPage { ram, ranges, pageless, hugetlb, hold_dir, devdax, ndctl, size } => {
            struct_page::struct_page(
                &mut r,
                &struct_page::Args {
                    ram,
                    ranges: ranges.as_deref(),
                    pageless: pageless.as_deref(),
                    hugetlb,
                    hold_dir: &hold_dir,
                    devdax: devdax.as_deref(),
                    ndctl: &ndctl,
                    size,
                },
            )
        }
    };
    if let Err(e) = res {
        r.check(
            "pageless-guest-error",
            false,
            format!("{}: {e}", std::env::args().nth(1).unwrap_or_default()),
        );
    }
    std::process::exit(if r.failed == 0 { 0 } else { 1 });
}

//! A VM of several NUMA cells (`pageless serve --cell ID:SIZE:POOL[@node=N]`), without a
//! guest: each cell is its own allocation, bound to its host node, listed by STATUS; FIND and
//! WRITE see the cells end to end; an owner restart re-attaches every cell of a directory pool
//! and refuses another layout; `pageless qemu` refuses NUMA nodes that are not the cells.

use std::path::Path;
use std::process::{Command, Output};

use pageless_tests::bins;
use pageless_tests::owner::Owner;

fn pageless(run_dir: &Path, args: &[&str]) -> Output {
    Command::new(bins::pageless()).args(args).arg("--run-dir").arg(run_dir).output().unwrap()
}

fn stderr_of(out: &Output) -> String {
    assert!(!out.status.success(), "should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cells_are_served_bound_listed_and_reattached() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let pool = format!("dir:{}", shm.path().display());
    let cell0 = format!("0:8M:{pool}@node=0");
    let cell1 = "1:4M:memfd@node=0".to_string();
    let args = ["--cell", cell0.as_str(), "--cell", cell1.as_str()];
    let mut owner = Owner::start(&run, "numa", &args);

    let status = owner.status();
    assert_eq!(status.size, 12 << 20, "the cells' total");
    let cells: Vec<_> =
        status.cells.iter().map(|c| (c.id, c.size, c.offset, c.host_node, c.memory.as_str())).collect();
    assert_eq!(cells, vec![(0, 8 << 20, 0, Some(0), "tmpfs"), (1, 4 << 20, 8 << 20, Some(0), "memfd")]);
    assert_eq!(status.cells[0].path.as_deref(), Some(shm.path().join("numa.cell0").to_str().unwrap()));
    assert_eq!(status.cells[1].extent_count, Some(1));
    assert!(
        owner.log_shows("cell 1: 4M of memfd memory (page size 4K), bound to host node 0"),
        "{}",
        owner.log()
    );

    // The human-readable status shows each cell.
    let out = pageless(&run, &["status", "--vm", "numa"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 NUMA cells"), "{text}");
    assert!(
        text.contains("cell 1   4M of memfd (memfd, pages 4K), host node 0, at offset 0x800000"),
        "{text}"
    );

    // WRITE and FIND address the cells end to end; a write may not cross from one to the next.
    let client = owner.connect().unwrap();
    client.write((8 << 20) + 4096, b"CELL-ONE-MARK").unwrap();
    client.write(4096, b"CELL-ZERO-MARK").unwrap();
    assert_eq!(client.find(b"CELL-ONE-MARK").unwrap(), vec![(8 << 20) + 4096]);
    assert_eq!(client.find(b"CELL-ZERO-MARK").unwrap(), vec![4096]);
    assert!(client.write((8 << 20) - 4, b"crossing").is_err(), "a write across two cells");
    assert!(client.write(12 << 20, b"x").is_err(), "past the last cell");
    let regions = client.get_memory().unwrap();
    assert_eq!(regions.iter().map(|r| r.cell).collect::<Vec<_>>(), vec![0, 1]);
    drop((client, regions));

    // SIGKILL and a restart: the tmpfs cell is found again (a memfd cell is new memory).
    owner.kill();
    let again = Owner::start(&run, "numa", &args);
    let second = again.status();
    assert!(second.cells[0].reattached, "cell 0 is re-attached");
    assert_eq!(
        (second.cells[0].dev, second.cells[0].inode),
        (status.cells[0].dev, status.cells[0].inode),
        "the same file"
    );
    assert!(!second.cells[1].reattached, "a memfd cannot be re-attached");
    assert_eq!(again.find("CELL-ZERO-MARK"), vec![4096], "the restarted owner sees cell 0's memory");
    drop(again);

    // Another layout of the same VM's memory is refused, both ways.
    let out = pageless(&run, &["serve", "--vm", "numa", "--size", "8M", "--pool", &pool]);
    let err = stderr_of(&out);
    assert!(err.contains("holds \"numa.cell0\"") && err.contains("same layout as before"), "{err}");
    std::fs::rename(shm.path().join("numa.cell0"), shm.path().join("numa")).unwrap();
    let out = pageless(&run, &["serve", "--vm", "numa", "--cell", &cell0]);
    let err = stderr_of(&out);
    assert!(err.contains("holds \"numa\"") && err.contains("started with --size"), "{err}");
}

#[test]
fn bad_cells_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let err = stderr_of(&pageless(&run, &["serve", "--vm", "a", "--size", "8M", "--cell", "0:8M:memfd"]));
    assert!(err.contains("cannot be used with"), "{err}");
    let err = stderr_of(&pageless(&run, &["serve", "--vm", "a", "--pool", "memfd", "--cell", "0:8M:memfd"]));
    assert!(err.contains("cannot be used with"), "{err}");
    let err = stderr_of(&pageless(&run, &["serve", "--vm", "a"]));
    assert!(err.contains("--size"), "{err}");
    let err = stderr_of(&pageless(&run, &["serve", "--vm", "a", "--cell", "0:8M"]));
    assert!(err.contains("is not ID:SIZE:POOL[@node=HOSTNODE]"), "{err}");
    let err =
        stderr_of(&pageless(&run, &["serve", "--vm", "a", "--cell", "0:8M:memfd", "--cell", "0:8M:memfd"]));
    assert!(err.contains("cell 0 is given twice"), "{err}");
    let err = stderr_of(&pageless(&run, &["serve", "--vm", "a", "--cell", "0:8M:memfd@node=999"]));
    assert!(err.contains("host node 999 does not exist"), "{err}");
    // A cell's file name is also a VM name: its owner holds that name's lock.
    let _other = Owner::start(&run, "a.cell1", &["--size", "4M"]);
    let err =
        stderr_of(&pageless(&run, &["serve", "--vm", "a", "--cell", "0:4M:memfd", "--cell", "1:4M:memfd"]));
    assert!(err.contains("\"a.cell1\" is already served"), "{err}");
}

#[test]
fn pageless_qemu_gives_each_numa_node_its_cell_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let _owner = Owner::start(&run, "q", &["--cell", "0:8M:memfd", "--cell", "1:4M:memfd"]);
    let qemu = |sizes: (&str, &str)| {
        let (m0, m1) = (
            format!("memory-backend-ram,id=m0,size={}", sizes.0),
            format!("memory-backend-ram,id=m1,size={}", sizes.1),
        );
        // `echo` stands in for QEMU: it prints the rewritten command line.
        Command::new(bins::pageless())
            .arg("qemu")
            .arg("--run-dir")
            .arg(&run)
            .args([
                "--vm",
                "q",
                "--",
                "echo",
                "-object",
                &m0,
                "-object",
                &m1,
                "-numa",
                "node,nodeid=0,memdev=m0",
                "-numa",
                "node,nodeid=1,memdev=m1",
            ])
            .output()
            .unwrap()
    };
    let out = qemu(("8M", "4M"));
    let args = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let paths: Vec<&str> = args.split(',').filter_map(|p| p.strip_prefix("mem-path=")).collect();
    assert_eq!(paths.len(), 2, "{args}");
    assert_ne!(paths[0], paths[1], "each node its own cell's fd: {args}");
    let err = stderr_of(&qemu(("4M", "8M")));
    assert!(err.contains("NUMA node 0's RAM backend m0 is 4M but the owner's cell 0 is 8M"), "{err}");
}

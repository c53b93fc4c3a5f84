//! `vfio-map-bench`: the cost of VFIO_IOMMU_MAP_DMA (and UNMAP_DMA) of a whole guest-sized
//! mapping, pagelessfs (PFNMAP: type1 walks it with follow_fault_pfn, nothing pinned) versus
//! hugetlbfs (pinned struct pages) of the same page size, in one container.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::util::*;
use crate::vfio::{memfd, IommuInfo, Vfio};

struct Row {
    label: String,
    kind: &'static str,
    page: u64,
    map_ms: Vec<f64>,
    unmap_ms: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

/// A 1 GiB-aligned IOVA (not 0) where [iova, iova+size) is inside one valid range.
fn pick_iova(info: &IommuInfo, size: u64) -> Option<u64> {
    if info.ranges.is_empty() {
        return Some(GIB);
    }
    info.ranges.iter().find_map(|&(a, b)| {
        let start = a.max(GIB).div_ceil(GIB) * GIB;
        (start.checked_add(size - 1)? <= b).then_some(start)
    })
}

fn time_runs(vfio: &Vfio, m: &Map, iova: u64, size: u64, runs: usize) -> io::Result<(Vec<f64>, Vec<f64>)> {
    let (mut maps, mut unmaps) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = Instant::now();
        vfio.map_dma(m.addr(), iova, size)?;
        maps.push(t0.elapsed().as_secs_f64() * 1000.0);
        let t1 = Instant::now();
        let unmapped = vfio.unmap_dma(iova, size)?;
        unmaps.push(t1.elapsed().as_secs_f64() * 1000.0);
        if unmapped != size {
            return Err(io::Error::other(format!(
                "VFIO_IOMMU_UNMAP_DMA unmapped {unmapped:#x} of {size:#x}"
            )));
        }
    }
    Ok((maps, unmaps))
}

/// Size `f`, map it, touch every page (so the map times exclude first-touch allocation), time.
fn bench_file(vfio: &Vfio, f: &File, iova: u64, size: u64, runs: usize) -> io::Result<(Vec<f64>, Vec<f64>)> {
    f.set_len(0)?;
    f.set_len(size)?;
    let m = Map::shared(f, size as usize, 0)?;
    m.touch();
    time_runs(vfio, &m, iova, size, runs)
}

fn bench_dir(
    vfio: &Vfio,
    dir: &Path,
    iova: u64,
    size: u64,
    runs: usize,
) -> io::Result<(u64, Vec<f64>, Vec<f64>)> {
    let st = statfs(dir)?;
    if !size.is_multiple_of(st.bsize) {
        return Err(io::Error::other(format!(
            "size {} is not a multiple of the page size {}",
            human(size),
            human(st.bsize)
        )));
    }
    let path = dir.join("vfio-map-bench");
    let f = create(&path)?;
    let res = bench_file(vfio, &f, iova, size, runs);
    drop(f);
    let _ = std::fs::remove_file(&path);
    let (maps, unmaps) = res?;
    Ok((st.bsize, maps, unmaps))
}

pub struct BenchArgs<'a> {
    pub bdf: &'a str,
    pub pageless: &'a [PathBuf],
    pub hugetlbfs: &'a [PathBuf],
    pub memfd: bool,
    pub size: u64,
    pub runs: usize,
}

pub fn vfio_map_bench(r: &mut Report, a: &BenchArgs) -> io::Result<()> {
    let vfio = match Vfio::open(a.bdf) {
        Ok(v) => v,
        Err(e) => {
            r.check("vfio-map-bench-setup", false, e);
            return Ok(());
        }
    };
    let info = vfio.iommu_info()?;
    let Some(iova) = pick_iova(&info, a.size) else {
        r.check(
            "vfio-map-bench-setup",
            false,
            format!("no IOVA range holds {}: {}", human(a.size), info.describe()),
        );
        return Ok(());
    };
    r.check(
        "vfio-map-bench-setup",
        true,
        format!("{}, group {}; {}; IOVA {iova:#x}", vfio.iommu_name(), vfio.group_id, info.describe()),
    );
    let runs = a.runs.max(1);

    let mut rows: Vec<Row> = Vec::new();
    let mut entries: Vec<(&'static str, Option<&Path>)> = Vec::new();
    if a.memfd {
        entries.push(("memfd", None));
    }
    entries.extend(a.hugetlbfs.iter().map(|d| ("hugetlbfs", Some(d.as_path()))));
    entries.extend(a.pageless.iter().map(|d| ("pagelessfs", Some(d.as_path()))));
    for (kind, dir) in entries {
        let res = match dir {
            Some(d) => bench_dir(&vfio, d, iova, a.size, runs),
            None => memfd(c"vfio-map-bench")
                .and_then(|f| bench_file(&vfio, &f, iova, a.size, runs))
                .map(|(m, u)| (PAGE as u64, m, u)),
        };
        let where_ = dir.map_or("memfd".to_string(), |d| d.display().to_string());
        match res {
            Ok((page, map_ms, unmap_ms)) => {
                let label = format!("{kind}_{}", human(page).to_lowercase());
                println!(
                    "# {where_}: map ms {:?}, unmap ms {:?}",
                    map_ms.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
                    unmap_ms.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>()
                );
                r.check(
                    &format!("vfio-map-bench-{}", label.replace('_', "-")),
                    true,
                    format!(
                        "{where_}: {runs} x VFIO_IOMMU_MAP_DMA + UNMAP_DMA of {}, median {:.1} ms + {:.1} ms",
                        human(a.size),
                        median(&map_ms),
                        median(&unmap_ms)
                    ),
                );
                rows.push(Row { label, kind, page, map_ms, unmap_ms });
            }
            Err(e) if kind == "hugetlbfs" => {
                // Huge pages may not be available (1G pages at run time): say so, go on.
                println!("# hugetlbfs {where_}: {} (skipped: no huge pages?)", errno_name(&e));
            }
            Err(e) => {
                let label = match dir.and_then(|d| statfs(d).ok()) {
                    Some(st) => format!("{kind}-{}", human(st.bsize).to_lowercase()),
                    None => kind.to_string(),
                };
                r.check(&format!("vfio-map-bench-{label}"), false, format!("{where_}: {e}"));
            }
        }
    }

    let gib = a.size as f64 / GIB as f64;
    println!(
        "# vfio-map-bench: VFIO_IOMMU_MAP_DMA / UNMAP_DMA of {} at IOVA {iova:#x}, median of {runs}, mapping touched first ({})",
        human(a.size),
        vfio.iommu_name()
    );
    println!(
        "# {:<12} {:>5} {:>11} {:>11} {:>11} {:>13}  vs hugetlbfs of the same page size",
        "backing", "page", "map ms", "map ms/GiB", "unmap ms", "unmap ms/GiB"
    );
    let mut results = Vec::new();
    for row in &rows {
        let (map, unmap) = (median(&row.map_ms), median(&row.unmap_ms));
        let base = rows.iter().find(|h| h.kind == "hugetlbfs" && h.page == row.page);
        let ratios = match base {
            Some(h) if row.kind != "hugetlbfs" => {
                let (rm, ru) = (map / median(&h.map_ms), unmap / median(&h.unmap_ms));
                results.push((format!("vfio_map_ratio_{}_vs_{}", row.label, h.label), format!("{rm:.2}")));
                results.push((format!("vfio_unmap_ratio_{}_vs_{}", row.label, h.label), format!("{ru:.2}")));
                format!("map {rm:.2}x, unmap {ru:.2}x")
            }
            _ => "-".into(),
        };
        println!(
            "# {:<12} {:>5} {:>11.1} {:>11.1} {:>11.1} {:>13.1}  {ratios}",
            row.kind,
            human(row.page),
            map,
            map / gib,
            unmap,
            unmap / gib
        );
        results.push((format!("vfio_map_ms_per_gib_{}", row.label), format!("{:.1}", map / gib)));
        results.push((format!("vfio_unmap_ms_per_gib_{}", row.label), format!("{:.1}", unmap / gib)));
    }
    for (k, v) in results {
        r.result(&k, v);
    }
    Ok(())
}

//! CPU pinning of a benchmark run (issue 17, item 1; scenario key `pin = true`): the
//! benchmark process (load generator, frontends, the emulated links' proxies) on the first
//! CPU it may use, the instance processes on the others, so that instances burning CPU do not
//! preempt the frontend and the load generator's clock. On this 2-core machine that is one
//! core each: the frontend then has a core of its own, but one core less than unpinned.
//!
//! With the load generator as a process of its own (`client_process = true`,
//! [`crate::client`]) it gets the first CPU alone, the benchmark process the second, and the
//! instances the rest; on 2 CPUs the benchmark process and the instances share the second.

use std::io;

/// The CPUs this process's calling thread may run on.
///
/// Errors: the system call's.
pub fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
fn set(tid: libc::pid_t, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in `allowed`; CPU_SET indexes within CPU_SETSIZE (checked).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Every thread of this process restricted to `cpus` (threads started later inherit their
/// creator's set).
fn set_process(cpus: &[usize]) -> io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Ok(tid) = entry?.file_name().to_string_lossy().parse::<libc::pid_t>() else { continue };
        match set(tid, cpus) {
            // A thread that ended meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

/// A run's pinning, undone (every thread back to the CPUs it had) when dropped.
pub struct Pinning {
    before: Vec<usize>,
    /// The CPUs of the instance processes, as `taskset -c` takes them ("1" or "1,2,3").
    pub instances: String,
    /// The CPU of the load generator process, when it is one (`taskset -c` syntax).
    pub client: Option<String>,
    /// What the run reports: `bench cpu 0, instances cpus 1` (`client cpu 0, bench cpu 1,
    /// instances cpus 1` with a load generator process).
    pub name: String,
}

impl Pinning {
    /// Pins this process to its first allowed CPU and names the rest for the instances; with
    /// `client_process`, the first CPU is the load generator's, this process gets the second,
    /// and the instances the rest (the second too, when there are only 2).
    ///
    /// Errors: fewer than 2 CPUs allowed, or a failed system call.
    pub fn split(client_process: bool) -> anyhow::Result<Self> {
        let before = allowed()?;
        anyhow::ensure!(before.len() >= 2, "pin = true needs 2 CPUs or more; this process may use {:?}", before);
        let list = |cpus: &[usize]| cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let (client, bench, rest) = match client_process {
            false => (None, before[0], &before[1..]),
            true => (Some(before[0].to_string()), before[1], &before[(before.len() - 1).min(2)..]),
        };
        set_process(&[bench])?;
        let instances = list(rest);
        let name = match &client {
            Some(c) => format!("client cpu {c}, bench cpu {bench}, instances cpus {instances}"),
            None => format!("bench cpu {bench}, instances cpus {instances}"),
        };
        Ok(Self { name, instances, client, before })
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        if let Err(e) = set_process(&self.before) {
            eprintln!("could not undo CPU pinning: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinning moves every thread, a thread started meanwhile inherits it, and dropping it
    /// gives the CPUs back.
    #[test]
    fn pinning_moves_every_thread_and_is_undone() {
        let before = allowed().unwrap();
        if before.len() < 2 {
            assert!(Pinning::split(false).is_err());
            return;
        }
        let p = Pinning::split(false).unwrap();
        assert_eq!(allowed().unwrap(), vec![before[0]]);
        let inherited = std::thread::spawn(|| allowed().unwrap()).join().unwrap();
        assert_eq!(inherited, vec![before[0]]);
        assert_eq!(p.instances.split(',').count(), before.len() - 1);
        assert_eq!(p.client, None);
        drop(p);
        assert_eq!(allowed().unwrap(), before);
        // A load generator process gets the first CPU alone; this process moves to the second.
        let p = Pinning::split(true).unwrap();
        assert_eq!(p.client, Some(before[0].to_string()));
        assert_eq!(allowed().unwrap(), vec![before[1]]);
        assert!(!p.instances.split(',').any(|c| c == before[0].to_string()), "{}", p.name);
        drop(p);
        assert_eq!(allowed().unwrap(), before);
    }
}

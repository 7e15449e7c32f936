//! CPU pinning of a benchmark run (issue 17, item 1; scenario key `pin = true`): the
//! benchmark process (load generator, frontends, the emulated links' proxies) on the first
//! CPU it may use, the instance processes on the others, so that instances burning CPU do not
//! preempt the frontend and the load generator's clock. On this 2-core machine that is one
//! core each: the frontend then has a core of its own, but one core less than unpinned.

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
    /// The CPUs of the instance processes, as `taskset -c` takes them ("1" or "1-3").
    pub instances: String,
    /// What the run reports: `bench cpu 0, instances cpus 1-1`.
    pub name: String,
}

impl Pinning {
    /// Pins this process to its first allowed CPU and names the rest for the instances.
    ///
    /// Errors: fewer than 2 CPUs allowed, or a failed system call.
    pub fn split() -> anyhow::Result<Self> {
        let before = allowed()?;
        anyhow::ensure!(before.len() >= 2, "pin = true needs 2 CPUs or more; this process may use {:?}", before);
        let (bench, rest) = (before[0], &before[1..]);
        set_process(&[bench])?;
        let instances = rest.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        Ok(Self { name: format!("bench cpu {bench}, instances cpus {instances}"), instances, before })
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
            assert!(Pinning::split().is_err());
            return;
        }
        let p = Pinning::split().unwrap();
        assert_eq!(allowed().unwrap(), vec![before[0]]);
        let inherited = std::thread::spawn(|| allowed().unwrap()).join().unwrap();
        assert_eq!(inherited, vec![before[0]]);
        assert_eq!(p.instances.split(',').count(), before.len() - 1);
        drop(p);
        assert_eq!(allowed().unwrap(), before);
    }
}

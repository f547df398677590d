//! A host with its own `#[global_allocator]`: every block carries a tag that `dealloc` checks,
//! so a block freed by an allocator other than this one (a patch's own, say) aborts the
//! process. Commands: `add S`, `describe`, `take`, `allocs`.

mod server;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

const TAG: u64 = 0xd5_0a11_0c_7a66;
const HEADER: usize = 16;

struct Tagged;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: blocks come from System with a header in front; the header's tag is checked before a
// block goes back to System.
unsafe impl GlobalAlloc for Tagged {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let align = layout.align().max(HEADER);
        let Ok(full) = Layout::from_size_align(layout.size() + align, align) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `full` has a non-zero size.
        let base = unsafe { System.alloc(full) };
        if base.is_null() {
            return base;
        }
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the block is `align` bytes longer than asked; the tag sits just before the
        // returned pointer, which keeps `align`.
        unsafe {
            let p = base.add(align);
            (p.sub(8) as *mut u64).write(TAG);
            (p.sub(16) as *mut u64).write(align as u64);
            p
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` came from `alloc` above (checked by the tag), so the header is readable.
        unsafe {
            if (p.sub(8) as *const u64).read() != TAG {
                let msg = b"alloc-host: a block not allocated by this allocator was freed\n";
                libc_write(msg);
                std::process::abort();
            }
            let align = (p.sub(16) as *const u64).read() as usize;
            (p.sub(8) as *mut u64).write(0);
            let full = Layout::from_size_align_unchecked(layout.size() + align, align);
            System.dealloc(p.sub(align), full);
        }
    }
}

fn libc_write(msg: &[u8]) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(msg);
}

#[global_allocator]
static GLOBAL: Tagged = Tagged;

#[dsu::state]
#[derive(Default)]
pub struct Names {
    names: Vec<String>,
}

#[dsu::component]
impl Names {
    pub fn add(&mut self, s: String) -> usize {
        self.names.push(s);
        self.names.len()
    }

    pub fn describe(&self) -> String {
        format!("v1:{}", self.names.join(","))
    }

    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.names)
    }
}

fn main() {
    let args = server::Args::parse();
    let rt = dsu::Runtime::builder()
        .program(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .control_socket(&args.socket)
        .start()
        .expect("start the dsu runtime");
    let names = rt.register(Names::default());
    server::serve(args.port, move |line| {
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "add" => names.add(arg.to_string()).to_string(),
            "describe" => names.describe(),
            "take" => names.take().join(","),
            "allocs" => ALLOCS.load(Ordering::Relaxed).to_string(),
            _ => format!("error unknown command `{cmd}`"),
        }
    });
}

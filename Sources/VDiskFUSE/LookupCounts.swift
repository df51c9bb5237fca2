import Synchronization
import VDiskStore

/// The kernel's lookup count of every node it knows (FUSE's `nlookup`).
///
/// Every `fuse_reply_entry`, `fuse_reply_create` and `readdirplus` entry adds one; `forget`
/// and `forget_multi` take away the number the kernel says. When a node's count reaches zero
/// the kernel has dropped its inode and the node may be forgotten by the ``Volume``
/// (an unlinked image's data can then go). The root is never counted or forgotten.
final class LookupCounts: Sendable {
    private let counts = Mutex<[NodeID: UInt64]>([:])

    /// Adds `n` references to `node`.
    func add(_ node: NodeID, _ n: UInt64 = 1) {
        guard node != Volume.rootNode else { return }
        counts.withLock { $0[node, default: 0] += n }
    }

    /// Takes away `n` references; true when that was the last one.
    /// A forget for more references than were given is logged and treated as the last.
    func remove(_ node: NodeID, _ n: UInt64) -> Bool {
        guard node != Volume.rootNode else { return false }
        let (last, underflow): (Bool, Bool) = counts.withLock { table in
            let have = table[node] ?? 0
            if have > n {
                table[node] = have - n
                return (false, false)
            }
            table[node] = nil
            return (true, have < n)
        }
        if underflow { log("vdiskfs: kernel forgot node \(node) more often than it was looked up") }
        return last
    }

    /// The current count of `node` (for tests and diagnostics).
    func count(_ node: NodeID) -> UInt64 { counts.withLock { $0[node] ?? 0 } }
}

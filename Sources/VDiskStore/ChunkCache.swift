import Foundation
import Glibc

/// A bounded in-memory cache of decompressed chunks, keyed by hash, with single-flight
/// fills: when several readers miss on the same chunk, one reads it and the others wait.
/// The zero chunk never enters it. Eviction is by two generations (an approximation of
/// LRU): hits in the old generation move to the new one; when the new one is full, the
/// old one is dropped.
final class ChunkCache: @unchecked Sendable {
    /// A cached chunk's bytes; the buffer goes back to the pool when the last reader lets go.
    final class Entry: @unchecked Sendable {
        let bytes: UnsafeMutableRawBufferPointer
        private let pool: BufferPool
        private let slab: Bool
        init(count: Int, pool: BufferPool) { self.pool = pool; (bytes, slab) = pool.take(count) }
        deinit { pool.give(bytes, slab: slab) }
    }

    /// Chunk buffers, carved out of mmap'd slabs by size (every block size is a multiple of
    /// the page size), so that the cache's bytes are exactly what it holds: no malloc
    /// headers or alignment slack, and no heap fragmentation (with many FUSE threads, churning
    /// malloc for 4 KiB buffers left RSS far past the cache's size). Freed buffers are
    /// reused; past `limit` bytes of free buffers, their pages go back to the kernel
    /// (MADV_DONTNEED) and the buffers are kept for reuse without memory behind them.
    /// Slabs are never unmapped: their buffers are reused, and take no memory while free.
    final class BufferPool: @unchecked Sendable {
        private struct Free {
            /// Free slab buffers by size whose pages are resident, and those whose are not.
            var warm: [Int: [UnsafeMutableRawPointer]] = [:]
            var cold: [Int: [UnsafeMutableRawPointer]] = [:]
            var warmBytes = 0
        }
        private let free = Locked(Free())
        let limit: Int
        static let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        static let slabBytes = 2 << 20

        init(limit: Int) { self.limit = limit }

        /// A buffer of `count` bytes, and whether it is a slab's (else malloc'd).
        func take(_ count: Int) -> (UnsafeMutableRawBufferPointer, slab: Bool) {
            guard count > 0, count % Self.page == 0 else { return (.allocate(byteCount: max(count, 1), alignment: 64), false) }
            let p: UnsafeMutableRawPointer? = free.withLock { f in
                if let p = f.warm[count]?.popLast() { f.warmBytes -= count; return p }
                if let p = f.cold[count]?.popLast() { return p }
                // A new slab: one buffer for the caller, the rest free (untouched: cold).
                let slab = max(count, Self.slabBytes / count * count)
                guard let m = mmap(nil, slab, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), m != MAP_FAILED else { return nil }
                var at = slab - count
                while at > 0 { f.cold[count, default: []].append(m + at); at -= count }
                return m
            }
            if let p { return (UnsafeMutableRawBufferPointer(start: p, count: count), true) }
            return (.allocate(byteCount: count, alignment: 64), false)
        }

        func give(_ b: UnsafeMutableRawBufferPointer, slab: Bool) {
            guard slab, let p = b.baseAddress else { b.deallocate(); return }
            let warm = free.withLock { f -> Bool in
                guard f.warmBytes + b.count <= limit else { return false }
                f.warm[b.count, default: []].append(p)
                f.warmBytes += b.count
                return true
            }
            if !warm {
                _ = madvise(p, b.count, MADV_DONTNEED)
                free.withLock { $0.cold[b.count, default: []].append(p) }
            }
        }
    }

    /// A fill in progress. Its semaphore is made by the first reader that waits (under the
    /// state lock), so that the common fill, which nobody waits for, allocates none.
    private final class Fill: @unchecked Sendable {
        var done: DispatchSemaphore?
        var waiters = 0
        var result: Result<Entry, StoreError>?
    }

    private struct State {
        var young: [ChunkHash: Entry] = [:]
        var old: [ChunkHash: Entry] = [:]
        var youngBytes = 0
        var filling: [ChunkHash: Fill] = [:]
    }

    private let state = Locked(State())
    let capacityBytes: Int

    private let pool: BufferPool

    init(capacityBytes: Int) {
        self.capacityBytes = max(capacityBytes, 1 << 20)
        // Buffers dropped with the old generation are reused for the next fills.
        pool = BufferPool(limit: self.capacityBytes / 2)
    }

    /// The chunk `ref` (raw length `length`), read with `load` on a miss.
    func get(_ ref: ChunkRef, length: Int, load: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> Entry {
        enum Step { case hit(Entry), wait(Fill), fill(Fill) }
        let step: Step = state.withLock { s in
            if let e = s.young[ref.hash] { return .hit(e) }
            if let e = s.old[ref.hash] {
                s.old[ref.hash] = nil
                insert(&s, ref.hash, e)
                return .hit(e)
            }
            if let f = s.filling[ref.hash] {
                f.waiters += 1
                if f.done == nil { f.done = DispatchSemaphore(value: 0) }
                return .wait(f)
            }
            let f = Fill()
            s.filling[ref.hash] = f
            return .fill(f)
        }
        switch step {
        case .hit(let e): return e
        case .wait(let f):
            f.done!.wait()
            return try f.result!.get()
        case .fill(let f):
            let entry = Entry(count: length, pool: pool)
            let result: Result<Entry, StoreError>
            do { try load(entry.bytes); result = .success(entry) }
            catch { result = .failure(StoreError.system(error, "read chunk", path: "")) }
            let (waiters, done) = state.withLock { s -> (Int, DispatchSemaphore?) in
                s.filling[ref.hash] = nil
                if case .success(let e) = result { insert(&s, ref.hash, e) }
                f.result = result
                return (f.waiters, f.done)
            }
            for _ in 0..<waiters { done!.signal() }
            return try result.get()
        }
    }

    /// Memory an entry takes besides its bytes (its object and its slot in a generation's
    /// table), charged against the capacity so that the cache's whole footprint fits in it.
    static let entryOverhead = 160

    private func insert(_ s: inout State, _ h: ChunkHash, _ e: Entry) {
        if s.young[h] == nil { s.youngBytes += e.bytes.count + Self.entryOverhead }
        s.young[h] = e
        if s.youngBytes > capacityBytes / 2 {
            s.old = s.young
            s.young = [:]
            s.youngBytes = 0
        }
    }

    /// Bytes held (at most about `capacityBytes`).
    var residentBytes: Int {
        state.withLock { s in s.youngBytes + s.old.values.reduce(0) { $0 + $1.bytes.count + Self.entryOverhead } }
    }
}

import Foundation

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
        init(count: Int, pool: BufferPool) { self.pool = pool; bytes = pool.take(count) }
        deinit { pool.give(bytes) }
    }

    /// Recycles chunk buffers by size, up to a byte limit, so a busy cache does not churn
    /// malloc (with many FUSE threads that fragments glibc's per-thread arenas and RSS
    /// climbs far past the cache's size).
    final class BufferPool: @unchecked Sendable {
        private let free = Locked<(buffers: [Int: [UnsafeMutableRawBufferPointer]], bytes: Int)>(([:], 0))
        let limit: Int
        init(limit: Int) { self.limit = limit }
        func take(_ count: Int) -> UnsafeMutableRawBufferPointer {
            if let b = free.withLock({ f -> UnsafeMutableRawBufferPointer? in
                guard let b = f.buffers[count]?.popLast() else { return nil }
                f.bytes -= count
                return b
            }) { return b }
            return .allocate(byteCount: count, alignment: 64)
        }
        func give(_ b: UnsafeMutableRawBufferPointer) {
            let kept = free.withLock { f -> Bool in
                guard f.bytes + b.count <= limit else { return false }
                f.buffers[b.count, default: []].append(b)
                f.bytes += b.count
                return true
            }
            if !kept { b.deallocate() }
        }
        deinit { free.withLock { f in for list in f.buffers.values { for b in list { b.deallocate() } } } }
    }

    private final class Fill: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
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
        pool = BufferPool(limit: self.capacityBytes / 2 + (8 << 20))
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
            if let f = s.filling[ref.hash] { f.waiters += 1; return .wait(f) }
            let f = Fill()
            s.filling[ref.hash] = f
            return .fill(f)
        }
        switch step {
        case .hit(let e): return e
        case .wait(let f):
            f.done.wait()
            return try f.result!.get()
        case .fill(let f):
            let entry = Entry(count: length, pool: pool)
            let result: Result<Entry, StoreError>
            do { try load(entry.bytes); result = .success(entry) }
            catch { result = .failure(StoreError.system(error, "read chunk", path: "")) }
            let waiters = state.withLock { s -> Int in
                s.filling[ref.hash] = nil
                if case .success(let e) = result { insert(&s, ref.hash, e) }
                f.result = result
                return f.waiters
            }
            for _ in 0..<waiters { f.done.signal() }
            return try result.get()
        }
    }

    private func insert(_ s: inout State, _ h: ChunkHash, _ e: Entry) {
        if s.young[h] == nil { s.youngBytes += e.bytes.count }
        s.young[h] = e
        if s.youngBytes > capacityBytes / 2 {
            s.old = s.young
            s.young = [:]
            s.youngBytes = 0
        }
    }

    /// Bytes held (at most about `capacityBytes`).
    var residentBytes: Int {
        state.withLock { s in s.youngBytes + s.old.values.reduce(0) { $0 + $1.bytes.count } }
    }
}

/// A few reusable buffers of one size, for short-lived scratch space on hot paths (a run of
/// records read from a pack). A fresh large allocation per read is returned to the system
/// when freed, so every read paid page faults and page clearing again (7 % of a streaming
/// read's CPU); kept buffers stay resident. At most `keep` buffers are kept, so the pool
/// holds at most `keep × size` bytes; callers beyond that, or asking for more than `size`,
/// get a buffer of their own. Thread-safe.
final class ScratchPool: @unchecked Sendable {
    let size: Int
    private let keep: Int
    private let free: Locked<[UnsafeMutableRawBufferPointer]>

    init(size: Int, keep: Int) {
        self.size = size
        self.keep = keep
        free = Locked([])
    }

    deinit { free.withLock { $0.forEach { $0.deallocate() } } }

    /// The most memory the pool keeps between uses.
    var keptBytesLimit: Int { size * keep }

    /// Runs `body` with a buffer of at least `count` bytes (its contents are undefined).
    func withBuffer<T>(_ count: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> T) rethrows -> T {
        guard count <= size else {
            let own = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
            defer { own.deallocate() }
            return try body(own)
        }
        let buffer = free.withLock { $0.popLast() } ?? .allocate(byteCount: size, alignment: 4096)
        defer {
            let kept = free.withLock { list -> Bool in
                guard list.count < keep else { return false }
                list.append(buffer)
                return true
            }
            if !kept { buffer.deallocate() }
        }
        return try body(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]))
    }
}

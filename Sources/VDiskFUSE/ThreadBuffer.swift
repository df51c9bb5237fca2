import Glibc

/// One reusable, growable buffer per FUSE worker thread, for read replies: a read fills it
/// and `fuse_reply_buf` copies it to the kernel, so no per-request allocation is needed.
/// libfuse creates and ends worker threads as load changes; a thread's buffer is freed
/// when the thread exits.
final class ThreadBuffer: @unchecked Sendable {
    private var key = pthread_key_t()

    /// Layout of the malloc'd block: capacity (Int), then the bytes.
    private static let header = MemoryLayout<Int>.stride

    init() {
        let rc = pthread_key_create(&key) { block in free(block) }
        precondition(rc == 0, "pthread_key_create failed: \(rc)")
    }

    deinit { pthread_key_delete(key) }

    /// This thread's buffer, at least `size` bytes long. Valid until the next call on this thread.
    func get(_ size: Int) -> UnsafeMutableRawBufferPointer? {
        var block = pthread_getspecific(key)
        if block == nil || block!.load(as: Int.self) < size {
            // Grow to the next power of two (at least 128 KiB) so that sizes settle quickly.
            var capacity = 128 << 10
            while capacity < size { capacity <<= 1 }
            guard let grown = realloc(block, Self.header + capacity) else { return nil }
            grown.storeBytes(of: capacity, as: Int.self)
            pthread_setspecific(key, grown)
            block = grown
        }
        return UnsafeMutableRawBufferPointer(start: block! + Self.header, count: size)
    }
}

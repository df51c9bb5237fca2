import CRados
import Foundation
import VDiskStore

/// Asynchronous writes to one pool, all in flight at once (``RadosPool/writeBatch()``).
///
/// Each write copies its bytes and is sent at once (rados_aio_write / rados_aio_write_full);
/// ``wait()`` waits until every write so far is complete and reports the first failure. The
/// batch owns the copies until their writes are complete. Writes to one object are applied in
/// the order they were added. Any thread may add writes; a batch can be reused after `wait()`.
/// Deallocating a batch waits for its writes, ignoring their failures.
public final class RadosWriteBatch: @unchecked Sendable {
    /// The pool written to.
    public let pool: RadosPool
    private let lock = NSLock()
    private var inFlight: [(object: String, completion: RadosCompletion, bytes: UnsafeMutableRawBufferPointer)] = []
    private var firstError: Error?

    init(pool: RadosPool) { self.pool = pool }

    deinit { _ = try? wait() }

    /// Sends a write of `bytes` into `object` at `offset` (as ``RadosPool/write(_:_:at:)``).
    /// A failure, even in sending, is reported by ``wait()``.
    public func write<Bytes: ContiguousBytes>(_ object: String, _ bytes: Bytes, at offset: UInt64) {
        submit(object, bytes) { io, name, completion, buffer in
            rados_aio_write(io, name, completion, charPointer(UnsafeRawBufferPointer(buffer)), buffer.count, offset)
        }
    }

    /// Sends a write replacing the whole content of `object` with `bytes` (as
    /// ``RadosPool/writeFull(_:_:)``). A failure, even in sending, is reported by ``wait()``.
    public func writeFull<Bytes: ContiguousBytes>(_ object: String, _ bytes: Bytes) {
        submit(object, bytes) { io, name, completion, buffer in
            rados_aio_write_full(io, name, completion, charPointer(UnsafeRawBufferPointer(buffer)), buffer.count)
        }
    }

    /// The number of writes sent and not yet waited for.
    public var count: Int { lock.withLock { inFlight.count } }

    /// Waits until every write sent so far is complete; throws the first failure among them
    /// (``RadosPool`` explains the errors). The batch is empty afterwards.
    public func wait() throws {
        let (writes, error) = lock.withLock {
            defer { inFlight = []; firstError = nil }
            return (inFlight, firstError)
        }
        var failure = error
        for write in writes {
            let rc = write.completion.wait()
            write.bytes.deallocate()
            if rc < 0 && failure == nil { failure = pool.failure(rc, "write", write.object) }
        }
        if let failure { throw failure }
    }

    private func submit<Bytes: ContiguousBytes>(
        _ object: String, _ bytes: Bytes,
        _ send: (rados_ioctx_t, String, rados_completion_t, UnsafeMutableRawBufferPointer) -> Int32
    ) {
        do {
            try checkName(object, "object")
            let completion = try RadosCompletion(context: "rados write \(object)")
            let copy = bytes.withUnsafeBytes { source in
                let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: source.count, alignment: 16)
                copy.copyMemory(from: source)
                return copy
            }
            // Sending under the lock keeps the order of writes to one object the order of adding.
            let rc = lock.withLock {
                let rc = send(pool.io, object, completion.handle, copy)
                if rc == 0 { inFlight.append((object, completion, copy)) }
                return rc
            }
            if rc != 0 {
                copy.deallocate()
                throw pool.failure(rc, "write", object)
            }
        } catch {
            lock.withLock { firstError = firstError ?? error }
        }
    }
}

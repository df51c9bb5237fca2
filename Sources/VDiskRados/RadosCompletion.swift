import CRados
import VDiskStore

/// One librados asynchronous completion (`rados_completion_t`), released when this is
/// deallocated. Callers keep every buffer an operation uses alive until `wait()` returned.
final class RadosCompletion {
    let handle: rados_completion_t

    /// rados_aio_create_completion2, with no callback: completion is awaited with `wait()`.
    init(context: @autoclosure () -> String) throws {
        var completion: rados_completion_t?
        let rc = rados_aio_create_completion2(nil, nil, &completion)
        guard rc == 0, let completion else { throw StoreError.rados(rc, context()) }
        handle = completion
    }

    /// Waits until the operation is complete (committed, for a write) and returns its result:
    /// >= 0 on success (bytes, for a read), -errno on failure.
    func wait() -> Int32 {
        _ = rados_aio_wait_for_complete(handle)
        return rados_aio_get_return_value(handle)
    }

    /// The object's version after the completed operation (per completion, unlike the
    /// io context's racy rados_get_last_version).
    var version: UInt64 { rados_aio_get_version(handle) }

    deinit { rados_aio_release(handle) }
}

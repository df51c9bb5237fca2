import Foundation

/// A value behind a plain pthread mutex (NSLock). Swift's `Mutex` spins before it sleeps,
/// which with many FUSE threads on few cores burns most of the CPU in the slow path;
/// a futex-backed mutex parks waiters at once.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    @inline(__always)
    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

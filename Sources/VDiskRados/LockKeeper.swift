import Foundation
import VDiskStore

/// Keeps this process's RADOS lock holds (the writers' store lock, image leases) alive: a
/// background thread renews each one every third of its duration. A hold that could not be
/// renewed (it lapsed, or an operator broke it) is marked lost and never silently retaken:
/// another host may have held it in between.
final class LockKeeper: @unchecked Sendable {
    /// One hold: the lock `name` on `object`, taken with `cookie` (shared when `tag` is set).
    struct Hold: Hashable, Sendable {
        var object: String
        var name: String
        var cookie: String
        var tag: String?
    }

    let pool: RadosPool
    let seconds: Double
    /// Holds being renewed → still held.
    private var table: [Hold: Bool] = [:]
    private let tableLock = NSLock()
    private let wake = NSCondition()
    private var thread: Thread?
    private var stopping = false

    init(pool: RadosPool, seconds: Double) {
        self.pool = pool
        self.seconds = seconds
    }

    /// Starts renewing `hold` (just taken).
    func keep(_ hold: Hold) {
        tableLock.withLock { table[hold] = true }
        wake.lock()
        if thread == nil && !stopping {
            let t = Thread { [unowned self] in self.run() }
            t.name = "vdiskfs-leases"
            thread = t
            t.start()
        }
        wake.unlock()
    }

    func isHeld(_ hold: Hold) -> Bool { tableLock.withLock { table[hold] ?? false } }

    /// Stops renewing `hold` and unlocks it.
    func release(_ hold: Hold) {
        guard tableLock.withLock({ table.removeValue(forKey: hold) }) != nil else { return }
        _ = try? pool.unlock(hold.object, name: hold.name, cookie: hold.cookie)
    }

    /// Stops renewing, unlocks every hold, and waits for the renewal thread to end (so that
    /// the connection is shut down by the caller, never by that thread as the process exits).
    func stop() {
        wake.lock()
        stopping = true
        wake.broadcast()
        let t = thread
        wake.unlock()
        while let t, !t.isFinished { usleep(1000) }
        for h in tableLock.withLock({ Array(table.keys) }) { release(h) }
    }

    /// Renews `hold` now (renew-only: a lapsed hold is never retaken); false, and marked
    /// lost, when it is no longer held. Throws when the cluster cannot be asked.
    func renew(_ hold: Hold) throws -> Bool {
        guard isHeld(hold) else { return false }
        let renewed: Bool
        if let tag = hold.tag {
            renewed = try pool.lockShared(hold.object, name: hold.name, cookie: hold.cookie, tag: tag,
                                          description: hold.cookie, duration: seconds, renewal: .renewOnly)
        } else {
            renewed = try pool.lockExclusive(hold.object, name: hold.name, cookie: hold.cookie,
                                             description: hold.cookie, duration: seconds, renewal: .renewOnly)
        }
        if !renewed {
            log("vdiskfs: lost the lock on \(hold.object) (it expired or was broken)")
            tableLock.withLock { if table[hold] != nil { table[hold] = false } }
        }
        return renewed
    }

    private func run() {
        while true {
            wake.lock()
            if stopping { wake.unlock(); return }
            _ = wake.wait(until: Date(timeIntervalSinceNow: max(seconds / 3, 0.3)))
            let stop = stopping
            wake.unlock()
            if stop { return }
            for (hold, held) in tableLock.withLock({ table }) where held {
                // A transient failure: try again next round; the hold lasts `seconds`.
                do { _ = try renew(hold) } catch { log("vdiskfs: cannot renew the lock on \(hold.object): \(error)") }
            }
        }
    }
}

import Foundation

/// Which automatic snapshots to keep, as restic's `forget` does: the newest `last`, and
/// the newest snapshot in each of the most recent `hourly` hours, `daily` days and
/// `weekly` ISO weeks that have one. A snapshot kept by any rule is kept.
public struct RetentionPolicy: Equatable, Sendable {
    public var last: Int
    public var hourly: Int
    public var daily: Int
    public var weekly: Int

    public init(last: Int = 0, hourly: Int = 0, daily: Int = 0, weekly: Int = 0) {
        self.last = last; self.hourly = hourly; self.daily = daily; self.weekly = weekly
    }

    /// A policy that keeps nothing applies no pruning at all.
    public var keepsEverything: Bool { last == 0 && hourly == 0 && daily == 0 && weekly == 0 }

    /// The names to keep among `snapshots` (creation times in nanoseconds, UTC buckets).
    public func keep(_ snapshots: [Snapshot]) -> Set<String> {
        if keepsEverything { return Set(snapshots.map(\.name)) }
        let newestFirst = snapshots.sorted { $0.created > $1.created }
        var kept = Set(newestFirst.prefix(last).map(\.name))
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        func bucketed(_ count: Int, _ bucket: (Date) -> [Int]) {
            var seen: [[Int]] = []
            for s in newestFirst where seen.count < count {
                let b = bucket(Date(timeIntervalSince1970: Double(s.created) / 1e9))
                if !seen.contains(b) { seen.append(b); kept.insert(s.name) }
            }
        }
        bucketed(hourly) { let c = calendar.dateComponents([.year, .month, .day, .hour], from: $0); return [c.year!, c.month!, c.day!, c.hour!] }
        bucketed(daily) { let c = calendar.dateComponents([.year, .month, .day], from: $0); return [c.year!, c.month!, c.day!] }
        bucketed(weekly) { let c = calendar.dateComponents([.yearForWeekOfYear, .weekOfYear], from: $0); return [c.yearForWeekOfYear!, c.weekOfYear!] }
        return kept
    }
}

/// Takes a snapshot of a mounted volume every `interval` and prunes automatic snapshots
/// (those named by their UTC time) by `policy`; snapshots with a label of their own are
/// never pruned. Space of pruned snapshots returns with gc.
public final class SnapshotSchedule: @unchecked Sendable {
    let volume: Volume
    let interval: Double
    let policy: RetentionPolicy
    let clock: () -> Int64
    private let wake = NSCondition()
    private var stopping = false
    private var thread: Thread?
    private var last: Int64

    public init(volume: Volume, interval: Double, policy: RetentionPolicy, clock: @escaping () -> Int64 = Snapshot.now) {
        self.volume = volume
        self.interval = interval
        self.policy = policy
        self.clock = clock
        last = clock()
    }

    /// Whether a name is one the schedule gave (an ISO 8601 UTC time).
    static func isAutomatic(_ name: String) -> Bool {
        let f = ISO8601DateFormatter()
        return name.hasSuffix("Z") && f.date(from: name) != nil
    }

    /// Takes a snapshot if one is due at the clock's time, then prunes. Returns the new one.
    @discardableResult
    public func tick() throws -> Snapshot? {
        let now = clock()
        guard Double(now - last) / 1e9 >= interval else { return nil }
        last = now
        let name = Snapshot.timestampName(now)
        let snap = try volume.takeSnapshot(label: name)
        let automatic = volume.snapshots().filter { Self.isAutomatic($0.name) }
        let keep = policy.keep(automatic)
        for s in automatic where !keep.contains(s.name) {
            try volume.removeDirectory(parent: Volume.snapshotsNode, name: s.name)
        }
        return snap
    }

    public func start() {
        let t = Thread { [self] in
            while true {
                wake.lock()
                if !stopping { _ = wake.wait(until: Date().addingTimeInterval(min(interval, 60))) }
                let stop = stopping
                wake.unlock()
                if stop { return }
                do { try tick() } catch { log("vdiskfs: scheduled snapshot failed: \(error)") }
            }
        }
        t.name = "vdiskfs-snapshots"
        thread = t
        t.start()
    }

    public func stop() {
        wake.lock(); stopping = true; wake.signal(); wake.unlock()
        while let t = thread, !t.isFinished { usleep(1000) }
    }
}


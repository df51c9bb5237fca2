import Foundation

/// A progress bar with rate and ETA on standard error, drawn only when standard error is a
/// terminal; silent in scripts and logs.
final class ProgressBar {
    private let label: String
    private let enabled: Bool
    private let start = Date()
    private var lastDraw = Date.distantPast

    init(_ label: String, quiet: Bool = false) {
        self.label = label
        enabled = !quiet && isatty(2) != 0
    }

    /// A callback for the library: (done, total) bytes.
    var callback: ((Int64, Int64) -> Void)? {
        enabled ? { [self] done, total in update(done, total) } : nil
    }

    func update(_ done: Int64, _ total: Int64) {
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.1 || done >= total else { return }
        lastDraw = now
        let elapsed = max(now.timeIntervalSince(start), 0.001)
        let rate = Double(done) / elapsed
        let fraction = total > 0 ? min(1, Double(done) / Double(total)) : 1
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let eta = rate > 0 && total > done ? Double(total - done) / rate : 0
        let line = String(format: "\r%@ [%@] %3.0f%% %@/%@ %@/s ETA %@  ", label, bar, fraction * 100,
                          formatBytes(done), formatBytes(total), formatBytes(Int64(rate)), formatDuration(eta))
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// Clears the bar's line.
    func finish() {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}

func formatBytes(_ n: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var v = Double(n)
    var u = 0
    while abs(v) >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
}

func formatDuration(_ s: Double) -> String {
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
}

/// Parses sizes like 512, 4K, 4KiB, 64M, 2G.
func parseSize(_ s: String) -> Int64? {
    let t = s.trimmingCharacters(in: .whitespaces).uppercased()
    let suffixes: [(String, Int64)] = [("TIB", 1 << 40), ("GIB", 1 << 30), ("MIB", 1 << 20), ("KIB", 1 << 10),
                                       ("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10),
                                       ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10), ("B", 1)]
    for (suf, mul) in suffixes where t.hasSuffix(suf) {
        guard let v = Int64(t.dropLast(suf.count).trimmingCharacters(in: .whitespaces)), v >= 0 else { return nil }
        return v * mul
    }
    return Int64(t).flatMap { $0 >= 0 ? $0 : nil }
}

/// Writes a value as JSON on standard output.
func printJSON<T: Encodable>(_ value: T) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try enc.encode(value), as: UTF8.self))
}

/// Parses durations like 30s, 15m, 1h, 2d, 1w (seconds when no unit).
func parseDuration(_ s: String) -> Double? {
    let t = s.trimmingCharacters(in: .whitespaces).lowercased()
    let units: [(String, Double)] = [("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    for (u, mul) in units where t.hasSuffix(u) {
        return Double(t.dropLast()).map { $0 * mul }
    }
    return Double(t)
}

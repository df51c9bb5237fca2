import Foundation

/// A one-line progress bar on standard error, drawn only when standard error is a terminal
/// (`isatty(2)`); otherwise it writes nothing at all. Thread-safe; redraws at most 10 times a
/// second.
public final class TerminalProgress: @unchecked Sendable {
    public let enabled: Bool
    private let lock = NSLock()
    private var lastDraw: UInt64 = 0
    private var lastLabel = ""
    private var started: UInt64 = 0
    private var drawn = false

    public init(enabled: Bool = isatty(2) != 0) { self.enabled = enabled }

    /// A callback for ``AnalyzeOptions/progress``, or nil when disabled.
    public var callback: (@Sendable (String, Int64, Int64) -> Void)? {
        guard enabled else { return nil }
        return { [self] label, done, total in self.update(label, done, total) }
    }

    public func update(_ label: String, _ done: Int64, _ total: Int64) {
        guard enabled else { return }
        lock.lock()
        defer { lock.unlock() }
        let now = DispatchTime.now().uptimeNanoseconds
        if label != lastLabel { lastLabel = label; started = now; lastDraw = 0 }
        guard now - lastDraw >= 100_000_000 || (total >= 0 && done >= total) else { return }
        lastDraw = now
        let elapsed = max(Double(now - started) / 1e9, 0.001)
        let rate = Int64(Double(done) / elapsed)
        var line = "\r\(label) "
        if total > 0 {
            let f = min(1, Double(done) / Double(total))
            let filled = Int(f * 30)
            line += "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: 30 - filled) + "] "
            line += String(format: "%3.0f%% ", f * 100)
            line += "\(AnalyzeOptions.formatBytes(done))/\(AnalyzeOptions.formatBytes(total))"
        } else {
            line += AnalyzeOptions.formatBytes(done)
        }
        line += " \(AnalyzeOptions.formatBytes(rate))/s\u{1B}[K"
        FileHandle.standardError.write(Data(line.utf8))
        drawn = true
    }

    /// Clears the bar's line.
    public func finish() {
        guard enabled else { return }
        lock.lock()
        defer { lock.unlock() }
        if drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        drawn = false
    }
}

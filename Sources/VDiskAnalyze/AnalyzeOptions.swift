import Foundation
import VDiskStore

/// What `vdiskfs analyze` is asked to do. Validated by ``validated()`` before any file is opened.
public struct AnalyzeOptions: Sendable {
    /// The block sizes of the block-size table, in bytes: powers of two from 512 B to 16 MiB.
    public var blockSizes: [Int]
    /// The block size of the similarity matrix and of the per-image figures: the first
    /// block size given, or 4 KiB when the default set is used.
    public var primaryBlockSize: Int
    /// Memory for the block-hash tables: they hold at most 60 % of it (the rest is headroom for
    /// growing a table or sorting one); when that would be exceeded the largest table spills to
    /// disk as a sorted run, and the runs are merged at the end. Read buffers (two windows) and
    /// per-worker scratch come on top.
    public var memoryBudget: Int64
    /// Where spilled runs go (a fresh subdirectory is made and removed). Default: $TMPDIR,
    /// else /var/tmp (disk-backed, unlike a tmpfs /tmp).
    public var tempDirectory: String
    /// Worker threads for hashing and compressing; default: the active cores.
    public var workers: Int
    /// Bytes read per pass of the workers (a power of two, at least the largest block size).
    /// Default 8 MiB; made smaller automatically when the memory budget is tiny.
    public var windowSize: Int
    /// Skip the LZ4 trial compression (the store-size estimate is then left out).
    public var estimateStoreSize: Bool
    /// Called with (what, bytes done, bytes total or -1) while reading; calls never overlap.
    public var progress: (@Sendable (String, Int64, Int64) -> Void)?

    public static let defaultBlockSizes = [512, 1024, 4096, 8192, 65536]
    public static let defaultMemoryBudget: Int64 = 2 << 30
    public static let maxImages = 64
    public static let minBlockSize = 512
    public static let maxBlockSize = 16 << 20

    public init(blockSizes: [Int] = [], memoryBudget: Int64 = AnalyzeOptions.defaultMemoryBudget,
                tempDirectory: String? = nil, workers: Int? = nil, windowSize: Int = 8 << 20,
                estimateStoreSize: Bool = true,
                progress: (@Sendable (String, Int64, Int64) -> Void)? = nil) {
        if blockSizes.isEmpty {
            self.blockSizes = AnalyzeOptions.defaultBlockSizes
            primaryBlockSize = 4096
        } else {
            self.blockSizes = Array(Set(blockSizes)).sorted()
            primaryBlockSize = blockSizes[0]
        }
        self.memoryBudget = memoryBudget
        let env = ProcessInfo.processInfo.environment["TMPDIR"]
        self.tempDirectory = tempDirectory ?? ((env?.isEmpty == false) ? env! : "/var/tmp")
        self.workers = workers ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
        self.windowSize = windowSize
        self.estimateStoreSize = estimateStoreSize
        self.progress = progress
    }

    /// Throws ``StoreError/invalidArgument(_:)`` for anything out of range.
    public func validate() throws {
        for b in blockSizes {
            guard b >= AnalyzeOptions.minBlockSize, b <= AnalyzeOptions.maxBlockSize, b & (b - 1) == 0 else {
                throw StoreError.invalidArgument(
                    "block size \(b) is not a power of two from 512 B to 16 MiB (e.g. 512, 4K, 64K)")
            }
        }
        guard memoryBudget > 0 else { throw StoreError.invalidArgument("--memory-budget must be positive") }
        guard workers >= 1, workers <= 1024 else { throw StoreError.invalidArgument("workers must be from 1 to 1024") }
        guard windowSize > 0, windowSize & (windowSize - 1) == 0 else {
            throw StoreError.invalidArgument("window size must be a power of two")
        }
    }

    /// Parses a byte count: `4096`, `4K`, `4KiB`, `64k`, `2G`, `1.5GiB` (binary units).
    public static func parseByteCount(_ text: String) -> Int64? {
        let t = text.trimmingCharacters(in: .whitespaces).uppercased()
        guard !t.isEmpty else { return nil }
        let units: [(String, Double)] = [
            ("TIB", 0x1p40), ("GIB", 0x1p30), ("MIB", 0x1p20), ("KIB", 0x1p10),
            ("TB", 0x1p40), ("GB", 0x1p30), ("MB", 0x1p20), ("KB", 0x1p10),
            ("T", 0x1p40), ("G", 0x1p30), ("M", 0x1p20), ("K", 0x1p10), ("B", 1),
        ]
        var number = Substring(t)
        var mul = 1.0
        for (suffix, m) in units where t.hasSuffix(suffix) {
            number = t.dropLast(suffix.count)
            mul = m
            break
        }
        let digits = number.trimmingCharacters(in: .whitespaces)
        if mul == 1, let v = Int64(digits) { return v >= 0 ? v : nil }
        guard let v = Double(digits), v.isFinite, v >= 0 else { return nil }
        let r = (v * mul).rounded()
        guard r < 0x1p62 else { return nil }
        return Int64(r)
    }

    /// "512 B", "4 KiB", "1.5 GiB": binary units, one decimal above KiB unless exact.
    public static func formatBytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(n)
        var u = 0
        while abs(v) >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        if u == 0 { return "\(n) B" }
        if v == v.rounded() { return "\(Int64(v)) \(units[u])" }
        return String(format: "%.1f %@", v, units[u])
    }

    /// A block size for tables and headers: "512 B", "4 KiB", "64 KiB".
    public static func formatBlockSize(_ n: Int) -> String { formatBytes(Int64(n)) }
}

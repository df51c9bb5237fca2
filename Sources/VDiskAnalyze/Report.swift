/// The result of `vdiskfs analyze`.
///
/// All shares are fractions (0…1) of **non-zero data** (blocks mode) or of file data
/// (files mode); they are nil where there is no such data.
///
/// - *zero share*: bytes in all-zero blocks / image bytes (blocks of that size; the tail
///   block of an image whose size is not a multiple of the block size counts with its length).
/// - *self-duplication* of an image: (N − U) / N, where N is the image's non-zero bytes and
///   U the bytes of its distinct non-zero blocks: the share of its non-zero data that
///   deduplication within the image alone would remove.
/// - *similarity* of a pair A, B: (N_A + N_B − U_AB) / (N_A + N_B), where U_AB counts each
///   distinct non-zero block of A and B together once: the share of the pair's non-zero data
///   that is a duplicate (of a block in either image) and would not be stored again.
///   Two identical images without internal duplicates give 50 %; two images with no block in
///   common give the size-weighted mean of their self-duplications.
///   The matrix diagonal holds the self-duplication.
/// - *duplicate share* of all images together: the same formula over every image.
public struct AnalysisReport: Sendable {
    public enum Method: String, Sendable { case blocks, files }

    public var method: Method
    /// Block size of ``matrix`` and of the images' top-level figures (blocks mode).
    public var blockSize: Int?
    public var images: [ImageReport]
    /// Similarity matrix at ``blockSize`` (files mode: over whole files); the diagonal is the
    /// self-duplication.
    public var matrix: [[Double?]]
    /// One row per block size, ascending (blocks mode).
    public var blockSizes: [BlockSizeReport]
    /// Spilled runs written (0 when the hash tables stayed within the memory budget).
    public var spilledRuns: Int
    public var spilledBytes: Int64
    /// Bytes of holes in sparse image files, known to be zeros and not read.
    public var holeBytes: Int64
    /// Seconds spent, and logical bytes analysed (image sizes or file bytes).
    public var seconds: Double
    public var bytesAnalyzed: Int64

    /// The row for the matrix block size.
    public var primary: BlockSizeReport? { blockSizes.first { $0.blockSize == blockSize } }
}

public struct ImageReport: Sendable {
    public var path: String
    /// A short unique label (the base name unless two images share it).
    public var label: String
    /// Logical size in bytes (files mode: bytes of the distinct files).
    public var size: Int64
    /// Figures at the matrix block size (files mode: over whole files).
    public var zeroShare: Double?
    public var selfDuplication: Double?
    public var nonzeroBytes: Int64
    public var uniqueBytes: Int64
    /// LZ4 store size of this image alone at the matrix block size (nil in files mode or when
    /// the estimate was skipped).
    public var estimatedStoreBytes: Int64?
    /// Blocks mode: the same per block size, ascending.
    public var perBlockSize: [ImageLevelReport]
    /// Files mode: regular files counted, hard-linked copies not counted again, entries skipped
    /// (unreadable, vanished).
    public var files: Int?
    public var hardLinksDiscounted: Int?
    public var skipped: Int?
}

public struct ImageLevelReport: Sendable {
    public var blockSize: Int
    public var blocks: Int64
    public var zeroBlocks: Int64
    public var zeroShare: Double?
    public var nonzeroBytes: Int64
    public var uniqueBytes: Int64
    public var uniqueBlocks: Int64
    public var selfDuplication: Double?
    public var estimatedStoreBytes: Int64?
}

public struct BlockSizeReport: Sendable {
    public var blockSize: Int
    /// Over all images together.
    public var totalBytes: Int64
    public var zeroShare: Double?
    public var nonzeroBytes: Int64
    public var uniqueBytes: Int64
    public var uniqueBlocks: Int64
    public var duplicateShare: Double?
    /// Raw ingest of every image into one store with per-block LZ4: the LZ4 sizes of the
    /// distinct non-zero blocks, summed (raw size where LZ4 does not shrink a block).
    /// Record headers and the index are not included.
    public var estimatedStoreBytes: Int64?
    /// A file-system-aware ingest (skip blocks the file system does not use): not estimated yet.
    public var estimatedFsAwareStoreBytes: Int64? { nil }
    public var matrix: [[Double?]]
}

/// Per-key accumulation of one block size (or of whole files).
struct ShareAccumulator {
    let n: Int
    var uniqueBytes: [Int64]
    var uniqueBlocks: [Int64]
    var estimated: [Int64]
    var pairBytes: [Int64]  // n*n, [i*n+j] for i < j: bytes of distinct blocks both hold
    var allUniqueBytes: Int64 = 0
    var allUniqueBlocks: Int64 = 0
    var allEstimated: Int64 = 0
    private var members: [Int]

    init(images n: Int) {
        self.n = n
        uniqueBytes = Array(repeating: 0, count: n)
        uniqueBlocks = Array(repeating: 0, count: n)
        estimated = Array(repeating: 0, count: n)
        pairBytes = Array(repeating: 0, count: n * n)
        members = Array(repeating: 0, count: n)
    }

    /// One distinct block of `length` bytes (LZ4 size `csize`) held by the images in `mask`.
    @inline(__always)
    mutating func add(mask: UInt64, length: Int64, csize: Int64) {
        allUniqueBytes += length
        allUniqueBlocks += 1
        allEstimated += csize
        if mask & (mask - 1) == 0 {
            let i = mask.trailingZeroBitCount
            uniqueBytes[i] += length; uniqueBlocks[i] += 1; estimated[i] += csize
            return
        }
        var m = mask, k = 0
        while m != 0 {
            let i = m.trailingZeroBitCount
            uniqueBytes[i] += length; uniqueBlocks[i] += 1; estimated[i] += csize
            members[k] = i
            k += 1
            m &= m - 1
        }
        for a in 0..<k { for b in (a + 1)..<k { pairBytes[members[a] * n + members[b]] += length } }
    }

    /// Similarity matrix from each image's non-zero bytes.
    func matrix(nonzero: [Int64]) -> [[Double?]] {
        var m = Array(repeating: Array(repeating: Double?.none, count: n), count: n)
        for i in 0..<n {
            m[i][i] = share(nonzero[i] - uniqueBytes[i], of: nonzero[i])
            for j in (i + 1)..<n {
                let total = nonzero[i] + nonzero[j]
                let union = uniqueBytes[i] + uniqueBytes[j] - pairBytes[i * n + j]
                let v = share(total - union, of: total)
                m[i][j] = v
                m[j][i] = v
            }
        }
        return m
    }
}

@inline(__always)
func share(_ part: Int64, of whole: Int64) -> Double? { whole > 0 ? Double(part) / Double(whole) : nil }

/// Labels: base names, or whole paths where base names repeat.
func makeLabels(_ paths: [String]) -> [String] {
    func base(_ p: String) -> String {
        var s = Substring(p)
        while s.count > 1 && s.hasSuffix("/") { s = s.dropLast() }
        if let i = s.lastIndex(of: "/"), s.index(after: i) < s.endIndex { return String(s[s.index(after: i)...]) }
        return String(s)
    }
    let bases = paths.map(base)
    var counts: [String: Int] = [:]
    for b in bases { counts[b, default: 0] += 1 }
    return zip(paths, bases).map { counts[$1]! > 1 ? $0 : $1 }
}

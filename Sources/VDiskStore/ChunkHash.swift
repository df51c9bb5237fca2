import CCrypto
import CSupport

/// The SHA-256 of a chunk's uncompressed bytes: its identity in the store.
/// The all-zero hash is reserved for "a block of zeros" (or a subtree of them):
/// such blocks are never stored and never read from disk.
public struct ChunkHash: Hashable, Sendable, CustomStringConvertible, Comparable {
    // Four words rather than [UInt8]: no allocation, cheap hashing and comparison.
    public var w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64

    public static let zero = ChunkHash(w0: 0, w1: 0, w2: 0, w3: 0)

    public init(w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64) {
        self.w0 = w0; self.w1 = w1; self.w2 = w2; self.w3 = w3
    }

    /// Reads 32 raw hash bytes.
    public init(bytes p: UnsafeRawPointer) {
        w0 = UInt64(bigEndian: p.loadUnaligned(as: UInt64.self))
        w1 = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        w2 = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        w3 = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
    }

    /// Parses 64 hex digits.
    public init?(hex: String) {
        let u = Array(hex.utf8)
        guard u.count == 64 else { return nil }
        var words = [UInt64](repeating: 0, count: 4)
        for (i, c) in u.enumerated() {
            let v: UInt64
            switch c {
            case 48...57: v = UInt64(c - 48)
            case 97...102: v = UInt64(c - 87)
            case 65...70: v = UInt64(c - 55)
            default: return nil
            }
            words[i / 16] = words[i / 16] << 4 | v
        }
        self.init(w0: words[0], w1: words[1], w2: words[2], w3: words[3])
    }

    /// SHA-256 of `data` (OpenSSL EVP; SHA-NI where the CPU has it).
    public static func of(_ data: UnsafeRawBufferPointer) -> ChunkHash {
        var out = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &out) { o in
            _ = EVP_Digest(data.baseAddress, data.count, o.baseAddress!.assumingMemoryBound(to: UInt8.self),
                           nil, EVP_sha256(), nil)
        }
        return withUnsafeBytes(of: out) { ChunkHash(bytes: $0.baseAddress!) }
    }

    public static func of(_ bytes: [UInt8]) -> ChunkHash { bytes.withUnsafeBytes { of($0) } }

    public var isZero: Bool { (w0 | w1 | w2 | w3) == 0 }

    /// Writes the 32 raw bytes at `p`.
    public func store(to p: UnsafeMutableRawPointer) {
        p.storeBytes(of: w0.bigEndian, as: UInt64.self)
        p.storeBytes(of: w1.bigEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: w2.bigEndian, toByteOffset: 16, as: UInt64.self)
        p.storeBytes(of: w3.bigEndian, toByteOffset: 24, as: UInt64.self)
    }

    public var hex: String {
        var s = ""
        s.reserveCapacity(64)
        for w in [w0, w1, w2, w3] {
            let h = String(w, radix: 16)
            s += String(repeating: "0", count: 16 - h.count) + h
        }
        return s
    }

    public var description: String { hex }
    /// First 12 hex digits, for messages.
    public var short: String { String(hex.prefix(12)) }

    public static func < (a: ChunkHash, b: ChunkHash) -> Bool {
        (a.w0, a.w1, a.w2, a.w3) < (b.w0, b.w1, b.w2, b.w3)
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(w0 ^ w2) }
}

/// CRC-32C, the per-record checksum verified on every read.
@inline(__always)
public func crc32c(_ data: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
    vdisk_crc32c(seed, data.baseAddress, data.count)
}

/// True when every byte is zero.
@inline(__always)
public func isAllZero(_ data: UnsafeRawBufferPointer) -> Bool {
    data.count == 0 || vdisk_is_zero(data.baseAddress, data.count) != 0
}

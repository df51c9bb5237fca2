import CCrypto
import VDiskStore

/// The identity of a block in the analysis: the first 96 bits of its 32-byte digest
/// (`k0` = bytes 0..<8, `k1` = bytes 8..<12, big-endian).
///
/// The digest is the SHA-256 of the block's bytes at the smallest block size of the run (there
/// `k0 == ChunkHash.w0` of the store) and for a partial block at the end of an image. A full
/// block of a larger size gets SHA-256 of the byte 0x01 and its sub-blocks' digests at the next
/// smaller size: a hash tree, so every byte is hashed once however many block sizes are
/// measured. Equal bytes give equal digests either way, and different bytes different ones
/// (barring SHA-256 collisions). 96 bits keep an accidental collision of keys below 10⁻⁹ for
/// 10¹⁰ distinct blocks.
struct BlockKey: Hashable, Comparable {
    var k0: UInt64
    var k1: UInt32

    static func < (a: BlockKey, b: BlockKey) -> Bool { a.k0 != b.k0 ? a.k0 < b.k0 : a.k1 < b.k1 }
}

/// SHA-256 with a reused OpenSSL context: one-shot `EVP_Digest` fetches the algorithm and
/// allocates a context per call, which halves throughput on 512-byte blocks.
/// One per thread; not thread-safe.
final class BlockHasher {
    private static let sha256: OpaquePointer? = EVP_MD_fetch(nil, "SHA256", nil)
    private let ctx: OpaquePointer?
    private var out = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))

    init() { ctx = EVP_MD_CTX_new() }
    deinit { EVP_MD_CTX_free(ctx) }

    /// The analysis key of `data`.
    func key(_ data: UnsafeRawBufferPointer) -> BlockKey {
        guard let ctx, let md = BlockHasher.sha256 else {
            let h = ChunkHash.of(data)
            return BlockKey(k0: h.w0, k1: UInt32(truncatingIfNeeded: h.w1 >> 32))
        }
        return withUnsafeMutableBytes(of: &out) { o -> BlockKey in
            let p = o.baseAddress!.assumingMemoryBound(to: UInt8.self)
            if EVP_DigestInit_ex2(ctx, md, nil) == 1, EVP_DigestUpdate(ctx, data.baseAddress, data.count) == 1,
               EVP_DigestFinal_ex(ctx, p, nil) == 1 {
                return BlockKey(k0: UInt64(bigEndian: o.load(as: UInt64.self)),
                                k1: UInt32(bigEndian: o.load(fromByteOffset: 8, as: UInt32.self)))
            }
            let h = ChunkHash.of(data)
            return BlockKey(k0: h.w0, k1: UInt32(truncatingIfNeeded: h.w1 >> 32))
        }
    }

    /// The full SHA-256 of `data` into `out` (32 bytes).
    func digest(_ data: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        let p = out.assumingMemoryBound(to: UInt8.self)
        if let ctx, let md = BlockHasher.sha256, EVP_DigestInit_ex2(ctx, md, nil) == 1,
           EVP_DigestUpdate(ctx, data.baseAddress, data.count) == 1, EVP_DigestFinal_ex(ctx, p, nil) == 1 {
            return
        }
        ChunkHash.of(data).store(to: out)
    }

    /// A hash-tree node: SHA-256 of the byte 0x01 followed by the children's digests.
    func digestNode(_ children: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        var tag: UInt8 = 1
        let p = out.assumingMemoryBound(to: UInt8.self)
        if let ctx, let md = BlockHasher.sha256, EVP_DigestInit_ex2(ctx, md, nil) == 1,
           EVP_DigestUpdate(ctx, &tag, 1) == 1, EVP_DigestUpdate(ctx, children.baseAddress, children.count) == 1,
           EVP_DigestFinal_ex(ctx, p, nil) == 1 {
            return
        }
        var bytes = [UInt8](repeating: 1, count: 1 + children.count)
        bytes.withUnsafeMutableBytes { b in (b.baseAddress! + 1).copyMemory(from: children.baseAddress!, byteCount: children.count) }
        ChunkHash.of(bytes).store(to: out)
    }

    /// The analysis key of a 32-byte digest.
    static func key(ofDigest d: UnsafeRawPointer) -> BlockKey {
        BlockKey(k0: UInt64(bigEndian: d.loadUnaligned(as: UInt64.self)),
                 k1: UInt32(bigEndian: d.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
    }

    // Streaming interface, for whole files.
    private var streaming = false

    func begin() {
        if let ctx, let md = BlockHasher.sha256 { streaming = EVP_DigestInit_ex2(ctx, md, nil) == 1 }
    }

    func update(_ data: UnsafeRawBufferPointer) {
        if streaming, data.count > 0 { streaming = EVP_DigestUpdate(ctx, data.baseAddress, data.count) == 1 }
    }

    /// The full SHA-256 (nil when OpenSSL failed).
    func finish() -> ChunkHash? {
        guard streaming else { return nil }
        streaming = false
        return withUnsafeMutableBytes(of: &out) { o -> ChunkHash? in
            guard EVP_DigestFinal_ex(ctx, o.baseAddress!.assumingMemoryBound(to: UInt8.self), nil) == 1 else { return nil }
            return ChunkHash(bytes: o.baseAddress!)
        }
    }
}

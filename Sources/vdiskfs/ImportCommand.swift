import ArgumentParser
import Foundation
import VDiskStore

struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import", abstract: "Store a disk image (raw file or block device) under a name.",
        discussion: """
            NAME may contain directories (vms/web1.img); they are created. A NAME that exists is an \
            error. Zero blocks are not stored; blocks the store already has are not stored again. \
            The import reads MBR and GPT partition tables and ext2/3/4 block bitmaps: blocks a \
            file system marks free, and the old transactions in a cleanly unmounted file \
            system's journal, are stored as zeros (they read back as zeros). Anything that \
            does not validate is stored as plain blocks, with a warning; --raw turns this off. \
            New blocks near each other are compressed together, up to 32 KiB at a time \
            (--group-size; directory stores created by vdiskfs 0.2 or later). \
            A failed import leaves the store as it was.
            """)

    @OptionGroup var store: StoreOptions
    @Argument(help: "The raw disk image to read.") var file: String
    @Argument(help: "The image's name in the store.") var name: String
    @Option(help: "Block size: 4K, 8K, 16K, 32K or 64K.") var blockSize: String = "4K"
    @Flag(help: "Store every block as it is: no partition or file-system awareness.") var raw = false
    @Option(help: ArgumentHelp("Compress new blocks that lie near each other together, up to this many bytes: 0 (never), 8K, 16K, 32K or 64K. Larger is smaller on disk; a random read of one block then decodes more.", valueName: "size"))
    var groupSize: String = "32K"
    @Flag(help: "Print the report as JSON.") var json = false
    @Flag(name: .shortAndLong, help: "No progress bar.") var quiet = false

    func run() throws {
        guard let bs = parseSize(blockSize), let bs32 = UInt32(exactly: bs), ImageRoot.allowedBlockSizes.contains(bs32) else {
            throw StoreError.invalidArgument("--block-size must be 4K, 8K, 16K, 32K or 64K (got \(blockSize))")
        }
        guard let group = parseSize(groupSize), Importer.allowedGroupBytes.contains(Int(group)) else {
            throw StoreError.invalidArgument("--group-size must be 0, 8K, 16K, 32K or 64K (got \(groupSize))")
        }
        let s = try Store.open(at: try store.path, access: .readWrite, purpose: "import")
        let bar = ProgressBar("import", quiet: quiet)
        let r = try Importer.importImage(into: s, from: file, as: name, blockSize: bs32, fileSystemAware: !raw,
                                         groupBytes: Int(group), progress: bar.callback)
        bar.finish()
        for note in r.layoutNotes where note.hasPrefix("warning:") { FileHandle.standardError.write(Data("vdiskfs: \(note)\n".utf8)) }
        if json {
            try printJSON(["name": .string(r.name), "size": .int(Int64(r.size)), "blocks": .int(Int64(r.blocks)),
                           "zero_blocks": .int(Int64(r.zeroBlocks)), "duplicate_blocks": .int(Int64(r.duplicateBlocks)),
                           "new_chunks": .int(Int64(r.newChunks)), "new_stored_bytes": .int(Int64(r.newStoredBytes)),
                           "free_bytes_skipped": .int(Int64(r.freeBytesSkipped)),
                           "seconds": .double(r.seconds)] as [String: JSONValue])
        } else if !quiet {
            let rate = r.seconds > 0 ? Double(r.size) / r.seconds : 0
            print("imported \(r.name): \(formatBytes(Int64(r.size))) in \(String(format: "%.2f", r.seconds)) s (\(formatBytes(Int64(rate)))/s), " +
                  "\(r.newChunks) new chunks (\(formatBytes(Int64(r.newStoredBytes))) stored), \(r.duplicateBlocks) duplicate and \(r.zeroBlocks) zero blocks, " +
                  "\(formatBytes(Int64(r.freeBytesSkipped))) of free file-system blocks skipped")
        }
    }
}

/// A small JSON value for ad-hoc reports.
enum JSONValue: Encodable {
    case string(String), int(Int64), double(Double), bool(Bool)
    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .bool(let b): try c.encode(b)
        }
    }
}

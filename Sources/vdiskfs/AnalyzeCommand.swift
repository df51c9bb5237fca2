import ArgumentParser
import Foundation
import VDiskAnalyze
import VDiskStore

/// `vdiskfs analyze`: how much of a set of disk images a deduplicating store would keep only
/// once (the paper's section 2). Reads the images; needs no store.
struct AnalyzeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "analyze",
        abstract: "Measure duplication within and between disk images (no store needed).",
        discussion: """
            Reads each image once, cuts it into aligned blocks at every block size, hashes the \
            blocks (SHA-256) and reports, at the first block size given (default 4 KiB), with \
            N = an image's non-zero bytes and U = the bytes of its distinct non-zero blocks:

            Zero: the share of an image's bytes in all-zero blocks (a store keeps none).

            Self-dup: (N - U) / N, the share of an image's non-zero data that is a duplicate \
            within the image.

            Similarity of images A and B: (N_A + N_B - U_AB) / (N_A + N_B), where U_AB counts \
            each distinct non-zero block of the two images once: the share of the pair's \
            non-zero data that is a duplicate, i.e. that a store would not keep twice. \
            Identical images without internal duplicates give 50 %. The matrix diagonal is \
            the self-dup.

            Est. store: the distinct non-zero blocks of all images, each LZ4-compressed on \
            its own (raw when LZ4 does not shrink it), summed: the payload of a raw ingest \
            into one store, without record headers or index. File-system-aware ingest: n/a.

            The block-size table gives the same figures for every block size over all \
            images together (default 512, 1K, 4K, 8K and 64K; --block-size repeats).

            With --files the arguments are directories: every regular file is hashed whole, \
            hard links within a tree count once, and the same shares are computed over file \
            bytes (the paper's manifest method).

            Memory: 34 to 69 bytes per distinct block and block size (about 700 bytes per \
            4 KiB of distinct data with the five default sizes, 50 with --block-size 4K \
            alone). Beyond --memory-budget the tables spill to sorted runs in --temp-dir, \
            merged at the end.
            """)

    @Option(name: .customLong("block-size"),
            help: ArgumentHelp("A block size (repeatable): a power of two from 512 B to 16 MiB, e.g. 4096, 4K, 64KiB. The first given is the matrix's.",
                               valueName: "N"))
    var blockSizes: [String] = []

    @Flag(name: .customLong("json"), help: "Print one JSON object (images, matrix, block sizes, estimates).")
    var json = false

    @Flag(name: .customLong("csv"), help: "Print the similarity matrix as CSV (shares as fractions).")
    var csv = false

    @Option(name: .customLong("plot"),
            help: ArgumentHelp("Also write an SVG: a heatmap of the matrix and bar charts of the block-size table.",
                               valueName: "FILE.svg"))
    var plot: String?

    @Flag(name: .customLong("files"),
          help: "Compare directory trees file by file: the arguments are directories, not images.")
    var files = false

    @Option(name: .customLong("memory-budget"),
            help: ArgumentHelp("Memory for the block-hash tables before they spill to disk (e.g. 512M, 2G).", valueName: "SIZE"))
    var memoryBudget: String = "2G"

    @Option(name: .customLong("temp-dir"),
            help: ArgumentHelp("Where tables spill (default: $TMPDIR, else /var/tmp).", valueName: "DIR"))
    var tempDir: String?

    @Flag(name: .customLong("no-estimate"), help: "Skip the LZ4 trial compression (faster; no store-size estimate).")
    var noEstimate = false

    @Argument(help: ArgumentHelp("Raw disk images (files or block devices); directories with --files.", valueName: "IMAGE"))
    var inputs: [String]

    func run() throws {
        if json && csv { throw StoreError.invalidArgument("--json and --csv exclude each other") }
        var sizes: [Int] = []
        for text in blockSizes {
            guard let v = AnalyzeOptions.parseByteCount(text), v <= Int64(AnalyzeOptions.maxBlockSize) else {
                throw StoreError.invalidArgument(
                    "invalid block size '\(text)': a power of two from 512 B to 16 MiB, e.g. 4096, 4K, 64K")
            }
            sizes.append(Int(v))
        }
        guard let budget = AnalyzeOptions.parseByteCount(memoryBudget), budget > 0 else {
            throw StoreError.invalidArgument("invalid --memory-budget '\(memoryBudget)': a size such as 512M or 2G")
        }
        if files && !blockSizes.isEmpty {
            throw StoreError.invalidArgument("--block-size does not apply to --files (whole files are compared)")
        }
        let progress = TerminalProgress()
        defer { progress.finish() }
        let options = AnalyzeOptions(blockSizes: sizes, memoryBudget: budget, tempDirectory: tempDir,
                                     estimateStoreSize: !noEstimate, progress: progress.callback)
        let report = files
            ? try Analyzer.analyzeDirectories(inputs, options: options)
            : try Analyzer.analyzeImages(inputs, options: options)
        progress.finish()
        if let plot { try report.writeSVG(to: plot) }
        let text = json ? report.renderJSON() : csv ? report.renderCSV() : report.renderText()
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}

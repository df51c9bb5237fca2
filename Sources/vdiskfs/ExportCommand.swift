import ArgumentParser
import VDiskStore

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Write an image out as a raw disk image.",
        discussion: """
            FILE is written as a sparse file: zero blocks become holes. An existing FILE is an \
            error unless --force is given; a block device is written in full. Every block is \
            verified; damaged data stops the export (exit 18) and the partial file is removed.
            """)

    @OptionGroup var store: StoreOptions
    @Argument(help: "The image's name in the store.") var name: String
    @Argument(help: "The file (or block device) to write.") var file: String
    @Flag(help: "Overwrite FILE if it exists.") var force = false
    @Flag(name: .shortAndLong, help: "No progress bar.") var quiet = false

    func run() throws {
        let s = try Store.open(at: try store.path, access: .readOnly, purpose: "export")
        let bar = ProgressBar("export", quiet: quiet)
        try Exporter.export(from: s, image: name, to: file, force: force, progress: bar.callback)
        bar.finish()
    }
}

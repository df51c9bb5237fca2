import ArgumentParser
import VDiskStore

struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init", abstract: "Create an empty store.",
        discussion: "The directory is created if missing; an existing one must be empty.")

    @OptionGroup var store: StoreOptions

    func run() throws {
        let path = try store.path
        try Store.create(at: path)
        print("created store \(path)")
    }
}

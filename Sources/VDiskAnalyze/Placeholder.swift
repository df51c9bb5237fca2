enum VDiskAnalyzePlaceholder {}

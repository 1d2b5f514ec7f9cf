"""torchbeast-mm: IMPALA for Memory Maze."""

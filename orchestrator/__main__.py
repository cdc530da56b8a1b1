from orchestrator.entrypoints.cli import main

main()

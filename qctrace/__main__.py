from qctrace.cli import main

main()

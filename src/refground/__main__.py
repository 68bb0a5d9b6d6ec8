from refground.cli import main

main()

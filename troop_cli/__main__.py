from troop_cli.main import main

main()

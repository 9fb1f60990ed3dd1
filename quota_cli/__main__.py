from quota_cli.main import main

main()

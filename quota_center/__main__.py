from quota_center.cli import main

main()

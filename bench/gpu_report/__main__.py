from bench.gpu_report import main

raise SystemExit(main())

mkdir -p incoming
for d in 2024-01-03 2024-01-17 2024-02-01 2024-03-30; do echo "log of $d" > "incoming/app-$d.log"; done
echo "keep me" > incoming/README.txt

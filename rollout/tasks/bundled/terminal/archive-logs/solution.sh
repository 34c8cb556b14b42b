for f in incoming/app-*.log; do
  month=$(basename "$f" | sed -E 's/^app-([0-9]{4}-[0-9]{2})-[0-9]{2}\.log$/\1/')
  mkdir -p "archive/$month" && mv "$f" "archive/$month/"
done

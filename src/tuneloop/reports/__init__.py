"""What a retrain leaves for people: the evaluation summary and its tables, Markdown, JSON and HTML renderings."""

"""Reading a run's saved results: discovery and tidy tables (runs), statistics and intervals (stats), the
leaderboard's reference rows and Table IV (reference), paired comparisons and findings text (findings), the
report's figures (figures) and the tables and plots each stage's notebook shows (baseline_views, data_views,
training_views, edge_views: one module per kind of stage, so editing one reruns only the stages that show it).
"""

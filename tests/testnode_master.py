"""A test suite master after ERP5's portal_task_distribution, for
tests/test_testnode.py: the XML-RPC methods erp5.util's testnode and
taskdistribution call, one test suite, one test result per revision whose
lines go to whoever asks first. Run in the test node's sandbox:

    python3 testnode_master.py PORT SUITE_JSON STATE_FILE

SUITE_JSON: what startTestSuite hands out (one test suite). Everything the
master receives is appended to STATE_FILE as JSON lines, which the test
reads.
"""
import json
import sys
import threading

try:
    from xmlrpc.server import SimpleXMLRPCServer
except ImportError:  # pragma: no cover
    from SimpleXMLRPCServer import SimpleXMLRPCServer


class Master(object):

    def __init__(self, suite, state):
        self.suite, self.state = suite, state
        self.lock = threading.Lock()
        self.results = {}  # revision -> {'path', 'todo', 'started', 'done'}

    def log(self, **event):
        with open(self.state, 'a') as f:
            f.write(json.dumps(event, default=lambda b: getattr(b, 'data', b).decode(
                'utf-8', 'replace')) + '\n')

    def _dispatch(self, method, params):
        if method.startswith('_') or not hasattr(self, method):
            raise Exception('method %s is not supported' % method)
        with self.lock:
            self.log(call=method, params=params if method != 'stopUnitTest' else params[:1])
            return getattr(self, method)(*params)

    def getProtocolRevision(self):
        return 1

    def subscribeNode(self, node_title, computer_guid):
        return json.dumps({'process_timeout': None})

    def startTestSuite(self, node_title, computer_guid):
        return json.dumps([self.suite])

    def getTestType(self):
        return 'UnitTest'

    def generateConfiguration(self, test_suite_title):
        return json.dumps({'configuration_list': [{}], 'involved_nodes_computer_guid': [],
                           'error_message': None, 'launcher_nodes_computer_guid': [],
                           'launchable': True, 'randomized_path': 'x'})

    def isMasterTestnode(self, node_title):
        return True

    def createTestResult(self, name, revision, test_name_list, allow_restart, test_title,
                         node_title, project_title):
        result = self.results.get(revision)
        if result is None:
            result = self.results[revision] = {
                'path': 'test_result_module/%d' % (len(self.results) + 1),
                'todo': [], 'names': set()}
        for test in test_name_list:  # the runner's call names the cases
            if test not in result['names']:
                result['names'].add(test)
                result['todo'].append(test)
        return [result['path'], revision]

    def _result(self, path):
        for result in self.results.values():
            if result['path'] == path:
                return result

    def startUnitTest(self, test_result_path, exclude_list, node_title):
        result = self._result(test_result_path)
        todo = [t for t in result['todo'] if t not in exclude_list]
        if not todo:
            return None
        result['todo'].remove(todo[0])
        self.log(started=todo[0], node=node_title)
        return ['%s/%s' % (test_result_path, todo[0]), todo[0]]

    def stopUnitTest(self, line_path, status, node_title):
        self.log(stopped=line_path.rsplit('/', 1)[1], node=node_title,
                 status=dict((k, getattr(v, 'data', v)) for k, v in status.items()))

    def isTaskAlive(self, test_result_path):
        return 1

    def reportTaskStatus(self, test_result_path, status, node_title):
        pass

    def reportTaskFailure(self, test_result_path, status, node_title):
        self.log(failure=dict((k, getattr(v, 'data', v)) for k, v in status.items()),
                 node=node_title)


def main():
    port, suite, state = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    server = SimpleXMLRPCServer(('127.0.0.1', port), allow_none=True, logRequests=False)
    server.register_instance(Master(suite, state))
    server.serve_forever()


if __name__ == '__main__':
    main()
